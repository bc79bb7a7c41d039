"""Training for the Planner and Critic: data, SFT, GRPO, rewards and export. Heavy imports stay inside modules."""
