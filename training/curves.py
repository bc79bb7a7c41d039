"""Training curves: every logged metric as a JSON line, and a PNG of loss and rewards."""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _series(rows: Iterable[dict], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(row.get("step", len(steps)))
            values.append(float(value))
    return steps, values


def plot_metrics(rows: list[dict[str, Any]], out: str | Path, title: str = "") -> Path | None:
    """Plot loss (left) and rewards (right, when there are any) to ``out``; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    keys = {k for row in rows for k in row}
    per_function = sorted(k for k in keys if k.startswith("rewards/") and k.endswith("/mean"))
    parts = sorted(k for k in keys if k.startswith("critic/") and k != "critic/abstained")
    # One reward function's mean is the reward itself: show its parts instead.
    reward_keys = (
        (["reward"] if "reward" in keys else []) + (per_function if len(per_function) > 1 else []) + parts
    )
    panels = [("loss", ["loss"])] + ([("reward", reward_keys)] if reward_keys else [])
    if not any(_series(rows, key)[1] for _, keys in panels for key in keys):
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for axis, (label, keys) in zip(axes[0], panels):
        for key in keys:
            steps, values = _series(rows, key)
            if values:
                axis.plot(steps, values, label=key, marker="." if len(values) < 50 else None)
        axis.set_xlabel("step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if len(keys) > 1:
            axis.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:8]}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out


class MetricsRecorder(TrainerCallback):
    """Appends each log to ``metrics.jsonl`` (main process only) and plots the curves when training ends."""

    def __init__(self, out_dir: str | Path, title: str = ""):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / METRICS_FILE
        self.title = title

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.path.write_text("", encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch}
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float, str, bool)) or v is None})
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_metrics(read_metrics(self.path), self.out_dir / PLOT_FILE, self.title)


__all__ = ["METRICS_FILE", "MetricsRecorder", "PLOT_FILE", "plot_metrics", "read_metrics"]
