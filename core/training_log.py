"""Per-step training log: rows in memory (saved in the checkpoint), written as CSV and a reward-curve PNG."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .embedding_io import atomic_write

COLUMNS = ("step", "reward_mean", "reward_std", "lr", "step_index", "grad_norm", "skipped", "seconds")


def _stem(out: Path) -> str:
    return out.name[: -len(out.suffix)] if out.suffix else out.name


def log_paths(out: str | Path) -> tuple[Path, Path]:
    """(CSV, PNG) paths next to an output embedding ``x.safetensors``: ``x.log.csv``, ``x.rewards.png``."""
    out = Path(out)
    return out.with_name(f"{_stem(out)}.log.csv"), out.with_name(f"{_stem(out)}.rewards.png")


def preview_dir(out: str | Path) -> Path:
    """The folder of a run's preview images next to ``x.safetensors``: ``x.previews/``."""
    out = Path(out)
    return out.with_name(f"{_stem(out)}.previews")


def preview_path(out: str | Path, step: int) -> Path:
    """The preview image of optimizer step ``step``: ``x.previews/step_NNNNNN.png``."""
    return preview_dir(out) / f"step_{int(step):06d}.png"


def write_csv(rows: Iterable[dict], path: str | Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` finite values (NaN where there is none)."""
    out, acc = [], []
    for v in values:
        if math.isfinite(v):
            acc.append(v)
        acc = acc[-window:]
        out.append(sum(acc) / len(acc) if acc else float("nan"))
    return out


def reward_curve_figure(rewards: Sequence[float], title: Optional[str] = None, size: tuple[int, int] = (700, 400),
                        steps: Optional[Sequence[int]] = None):
    """A matplotlib ``Figure``: reward per step (thin) and its moving average (thick). No pyplot, Agg only."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    values = [float(r) for r in rewards]
    xs = list(steps) if steps is not None else list(range(1, len(values) + 1))
    fig = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    ax = fig.add_subplot(111)
    if values:
        ax.plot(xs, values, lw=0.6, alpha=0.45, label="batch mean reward")
        ax.plot(xs, moving_average(values, max(1, len(values) // 20)), lw=2.0, label="moving average")
        ax.legend(loc="lower right")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward")
    ax.set_title(title or "ReNeg training reward")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_rewards(rows: list[dict], path: str | Path, title: Optional[str] = None) -> Path:
    """The training log's reward curve as a PNG (written atomically)."""
    fig = reward_curve_figure([r["reward_mean"] for r in rows], title, steps=[int(r["step"]) for r in rows])
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
