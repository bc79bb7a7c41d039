"""Training for the Planner and Critic: data, SFT, GRPO, rewards and export. Heavy imports stay inside
modules.

- ``data``: the official formats and storyboards, read (validated) and written; the rows TRL trains on
- ``sft`` / ``grpo``: the training scripts (``python -m interleave_thinker.training.sft --config FILE``)
- ``rewards`` / ``judge``: the Critic's GRPO reward over a generator and a judge
- ``export``: a trained agent as a model folder for ComfyUI's ``models/LLM``
- ``evaluate``: the share of answers that parse; ``curves``: metrics and plots; ``tiny``: the tiny test model
"""
