"""The engine: plans, agents, generators, the refine loop and storyboards. It knows nothing of ComfyUI."""
