"""The sandbox world: procedural scenes with ground truth, for demos and honest evaluation."""
