"""Compare negatives (null text, a text negative, embedding files) on a prompt set with reward metrics.

Every negative renders every (prompt, seed) pair from the same x_T (seed ``seed + i*images_per_prompt + j`` for
prompt ``i``, image ``j``), so differences come from the negative alone. Reports per-group (e.g. HPSv2 style)
and overall means, the mean over groups (the paper's "average" column), and pairwise win-rates (share of
pairs where one negative scores higher; ties count half). Writes ``results.json``, ``scores.csv``,
``summary.csv``, ``grid.png`` (rows prompts, columns negatives) and ``bars.png`` into the output folder.

``protocol``: ``"differentiable"`` scores the float images with the training rewards' torch preprocessing;
``"benchmark"`` scores them as the official HPSv2 benchmark code reads them (8-bit JPEG round trip, PIL resize;
metric ``<name>@benchmark``, :mod:`.rewards.benchmark_protocol`); ``"both"`` does both on the same images and
reports the gap per metric (``protocol_gaps`` in results.json).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import textwrap
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

from .embedding_io import atomic_write, check_compatible, load_embedding
from .errors import NonFiniteError, RenegError
from .finite_scores import check_finite_scores
from .images import save_png, to_pil_images
from .model_boundary import DiffusionBackend, encode_fp32
from .prompts import PromptItem
from .rewards.base import Reward
from .train import batch_latents, render

ALL = "all"
MEAN_OF_GROUPS = "mean_of_groups"


# ---------------------------------------------------------------------------------------------- negatives
#: Named handcrafted negative prompts (``preset:NAME``), each with where it comes from.
HANDCRAFTED_PRESETS: dict[str, tuple[str, str]] = {
    "reneg-readme": (
        "distorted, ugly, blurry, low resolution, low quality, bad, deformed, disgusting, Overexposed, "
        "Simple background, Plain background, Grainy, Underexposed, too dark, too bright, too low contrast, "
        "too high contrast, Broken, Macabre, artifacts, oversaturated",
        "the example negative prompt of the authors' README, https://github.com/AMD-AIG-AIMA/ReNeg (commit "
        "5ac4e71), section Inference, 'pos_prompt + neg_prompt'"),
}


def handcrafted_preset(name: str) -> str:
    """The text of a named handcrafted negative (see :data:`HANDCRAFTED_PRESETS`)."""
    if name not in HANDCRAFTED_PRESETS:
        raise RenegError(f"Unknown handcrafted preset {name!r}; available: {', '.join(HANDCRAFTED_PRESETS)}.")
    return HANDCRAFTED_PRESETS[name][0]


@dataclass(frozen=True)
class NegativeSpec:
    """``kind``: ``"null"`` (empty prompt), ``"text"`` (a negative prompt) or ``"file"`` (an embedding)."""

    kind: str
    value: str = ""
    label: str = ""


def _is_file_like(token: str) -> bool:
    return Path(token).expanduser().exists() or token.lower().endswith((".safetensors", ".bin", ".pt", ".pth"))


def parse_negative_specs(values: Sequence[str] | str) -> list[NegativeSpec]:
    """Parse ``null,"text:low quality, blurry",neg.safetensors`` (one string, or several).

    Items are split on commas; a piece that is neither ``null``, ``text:…`` nor a file continues the previous
    ``text:`` item (so negative prompts may contain commas).
    """
    values = [values] if isinstance(values, str) else list(values)
    raw: list[list[str]] = []  # [kind, value]
    for value in values:
        for token in value.split(","):
            piece = token.strip()
            if not piece:
                continue
            if piece.lower() in ("null", "none", "empty", '""'):
                raw.append(["null", ""])
            elif piece.lower().startswith("text:"):
                raw.append(["text", token.split(":", 1)[1].strip()])
            elif piece.lower().startswith("refine:"):
                raw.append(["refine", token.split(":", 1)[1].strip()])
            elif piece.lower().startswith("preset:"):
                raw.append(["text", handcrafted_preset(piece.split(":", 1)[1].strip())])
            elif _is_file_like(piece):
                raw.append(["file", piece])
            elif raw and raw[-1][0] == "text":
                raw[-1][1] = f"{raw[-1][1]},{token}".strip()
            else:
                raise RenegError(f"Negative {piece!r} is not 'null', 'text:PROMPT' or an existing embedding file.")
    if not raw:
        raise RenegError("No negatives given; e.g. --negatives null,\"text:low quality\",neg.safetensors")
    specs, seen = [], {}
    for kind, value in raw:
        base = {"null": "null", "text": f"text:{value[:24]}", "file": Path(value).stem,
                "refine": f"refined:{Path(value).stem or 'null'}"}[kind]
        seen[base] = seen.get(base, 0) + 1
        label = base if seen[base] == 1 else f"{base}#{seen[base]}"
        specs.append(NegativeSpec(kind, value, label))
    return specs


@dataclass
class PerSampleNegative:
    """A negative refined for each evaluated prompt and seed from ``init`` (``refine:FILE`` / ``refine:null``):
    :func:`~.refine.refine_batch` with the final-image rule, so its image is the render of its embedding."""

    init: torch.Tensor
    reward: Reward
    max_steps: int = 10
    patience: int = 3
    lr: float = 5e-3


def resolve_negative(backend: DiffusionBackend, spec: NegativeSpec) -> torch.Tensor:
    """The ``[1,T,D]`` fp32 conditioning of a negative spec for ``backend`` (for ``refine:``: its start)."""
    if spec.kind == "refine":
        inner = NegativeSpec("null") if spec.value.lower() in ("", "null") else NegativeSpec("file", spec.value)
        return resolve_negative(backend, inner)
    if spec.kind == "file":
        tensor = load_embedding(spec.value).tensor
        check_compatible(tensor, backend.context_dim, where=f"model '{backend.name}'")
        return tensor
    return encode_fp32(backend, [spec.value if spec.kind == "text" else ""]).cpu()


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass
class EvalConfig:
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512
    seed: int = 0
    images_per_prompt: int = 1
    batch_size: int = 4            #: (prompt, seed) pairs rendered together
    mixed_precision: str = "no"
    grid_prompts: int = 8          #: rows of grid.png (first prompts)
    grid_thumb: int = 256          #: grid cell size in pixels
    save_images: bool = False      #: also write every image to ``images/<negative>/``
    protocol: str = "differentiable"  #: "differentiable", "benchmark" (official HPSv2 reading) or "both"


@dataclass
class EvalResult:
    negatives: list[str]
    metrics: list[str]
    groups: list[str]
    rows: list[dict]                                    #: one per (prompt, seed, negative) with metric values
    means: dict = field(default_factory=dict)           #: metric -> negative -> group|all|mean_of_groups -> mean
    stds: dict = field(default_factory=dict)            #: metric -> negative -> group|all -> std
    win_rates: dict = field(default_factory=dict)       #: metric -> a -> b -> P(score_a > score_b)
    files: dict = field(default_factory=dict)           #: name -> path written
    stopped: bool = False
    protocol_gaps: dict = field(default_factory=dict)   #: metric -> benchmark minus differentiable statistics

    def summary_table(self) -> list[dict]:
        base = self.negatives[0]
        out = []
        for m in self.metrics:
            for neg in self.negatives:
                for g in dict.fromkeys([*self.groups, ALL, MEAN_OF_GROUPS]):  # an ungrouped set's group is 'all'
                    if g not in self.means[m][neg]:
                        continue
                    n = sum(1 for r in self.rows if r["negative"] == neg and (g in (ALL, MEAN_OF_GROUPS)
                                                                                or r["group"] == g))
                    out.append({"metric": m, "negative": neg, "group": g, "mean": self.means[m][neg][g],
                                "std": self.stds[m][neg].get(g, float("nan")), "n": n,
                                f"win_rate_vs_{base}": self.win_rates[m][neg][base] if g == ALL else ""})
        return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
    return mean, math.sqrt(var)


def distinct_group_names(items: Sequence[PromptItem]) -> list[PromptItem]:
    """Rename groups that clash with the summary keys (``all``, ``mean_of_groups``) when there are several groups.

    A single group called ``all`` (an ungrouped prompt file) is the overall mean and stays as it is.
    """
    groups = set(it.group for it in items)
    if len(groups) < 2 or not groups & {ALL, MEAN_OF_GROUPS}:
        return list(items)
    return [PromptItem(it.text, f"{it.group} (group)") if it.group in (ALL, MEAN_OF_GROUPS) else it
            for it in items]


def protocol_gaps(rows: Sequence[dict], metrics: Sequence[str]) -> dict:
    """For each metric scored both ways: mean, mean absolute and max absolute ``benchmark − differentiable`` over
    the same images, and the share of image pairs (same prompt/seed, two negatives) whose order the protocols
    agree on."""
    from .rewards.benchmark_protocol import SUFFIX

    gaps = {}
    for m in metrics:
        b = f"{m}{SUFFIX}"
        if m.endswith(SUFFIX) or b not in metrics:
            continue
        diffs = [r[b] - r[m] for r in rows]
        if not diffs:
            continue
        by_image: dict[tuple, list[dict]] = {}
        for r in rows:
            by_image.setdefault((r["prompt_id"], r["seed"]), []).append(r)
        agree = total = 0
        for group in by_image.values():
            for i in range(len(group)):
                for j in range(i + 1, len(group)):
                    total += 1
                    agree += (group[i][m] > group[j][m]) == (group[i][b] > group[j][b])
        gaps[m] = {"mean_gap": sum(diffs) / len(diffs), "mean_abs_gap": sum(abs(d) for d in diffs) / len(diffs),
                   "max_abs_gap": max(abs(d) for d in diffs), "n": len(diffs),
                   "pair_order_agreement": agree / total if total else float("nan")}
    return gaps


def summarise(result: EvalResult) -> None:
    """Fill ``means``, ``stds``, ``win_rates`` and ``protocol_gaps`` from ``rows``."""
    for m in result.metrics:
        result.means[m], result.stds[m], result.win_rates[m] = {}, {}, {}
        by_key: dict[str, dict[tuple, float]] = {}
        for neg in result.negatives:
            rows = [r for r in result.rows if r["negative"] == neg]
            by_key[neg] = {(r["prompt_id"], r["seed"]): r[m] for r in rows}
            means, stds = {}, {}
            for g in result.groups:
                means[g], stds[g] = _mean_std([r[m] for r in rows if r["group"] == g])
            means[ALL], stds[ALL] = _mean_std([r[m] for r in rows])
            means[MEAN_OF_GROUPS] = sum(means[g] for g in result.groups) / len(result.groups) if result.groups \
                else float("nan")
            result.means[m][neg], result.stds[m][neg] = means, stds
        for a in result.negatives:
            result.win_rates[m][a] = {}
            for b in result.negatives:
                keys = by_key[a].keys() & by_key[b].keys()
                wins = sum(1.0 if by_key[a][k] > by_key[b][k] else 0.5 if by_key[a][k] == by_key[b][k] else 0.0
                           for k in keys)
                result.win_rates[m][a][b] = wins / len(keys) if keys else float("nan")
    result.protocol_gaps = protocol_gaps(result.rows, result.metrics)


def evaluate_negatives(backend: DiffusionBackend, negatives: Mapping[str, torch.Tensor], items: Sequence[PromptItem],
                       metrics: Mapping[str, Reward], config: Optional[EvalConfig] = None,
                       out_dir: Optional[str | Path] = None,
                       callback: Optional[Callable[[int, int], None]] = None,
                       should_stop: Optional[Callable[[], bool]] = None,
                       info: Optional[dict] = None) -> EvalResult:
    """Render ``items`` with every negative on shared seeds, score with every metric, summarise, write files.

    ``negatives``: label -> ``[1,T,D]`` (the first is the win-rate baseline). ``callback(done, total)`` after
    each batch; ``should_stop()`` ends early (results cover the pairs done). ``info`` is added to results.json.
    """
    config = config or EvalConfig()
    if not negatives:
        raise RenegError("evaluate_negatives needs at least one negative.")
    if not metrics:
        raise RenegError("evaluate_negatives needs at least one metric.")
    if not items:
        raise RenegError("evaluate_negatives needs at least one prompt.")
    for label, tensor in negatives.items():
        tensor = tensor.init if isinstance(tensor, PerSampleNegative) else tensor
        check_compatible(tensor, backend.context_dim, where=f"model '{backend.name}' (negative {label})")
    from .rewards.benchmark_protocol import with_protocol

    metrics = with_protocol(dict(metrics), config.protocol)
    items = distinct_group_names(items)
    ipp = max(1, config.images_per_prompt)
    pairs = [(i, config.seed + i * ipp + j) for i in range(len(items)) for j in range(ipp)]
    groups = list(dict.fromkeys(it.group for it in items))
    result = EvalResult(list(negatives), list(metrics), groups, [])
    out = Path(out_dir) if out_dir is not None else None
    grid: dict[tuple[int, str], torch.Tensor] = {}
    grid_rows = list(range(min(config.grid_prompts, len(items))))
    created: list[Path] = []  #: images this run added (removed again if it fails on a NaN score)
    out_existed = out is not None and out.exists()
    kept = "no results were written" + (" and this run's images were removed" if out and config.save_images else "")
    try:
        for start in range(0, len(pairs), max(1, config.batch_size)):
            if should_stop is not None and should_stop():
                result.stopped = True
                break
            chunk = pairs[start:start + config.batch_size]
            prompts, seeds = [items[i].text for i, _ in chunk], [s for _, s in chunk]
            cond = backend.encode_prompts(prompts)
            latents = batch_latents(backend, seeds, config.height, config.width)
            for label, negative in negatives.items():
                images = _images(backend, negative, prompts, seeds, cond, latents, config)
                with torch.no_grad():
                    scores = {m: reward.score(images, prompts).float().cpu() for m, reward in metrics.items()}
                check_finite_scores(images, scores, prompts, seeds, label, kept)
                for b, (i, seed) in enumerate(chunk):
                    result.rows.append({"prompt_id": i, "group": items[i].group, "prompt": items[i].text,
                                        "seed": seed, "negative": label, **{m: float(scores[m][b]) for m in metrics}})
                    if i in grid_rows and seed == config.seed + i * ipp:
                        grid[(i, label)] = _thumb(images[b], config.grid_thumb)
                    if out is not None and config.save_images:
                        path = out / "images" / _safe(label) / f"{i:05d}_{seed}.png"
                        created += [] if path.exists() else [path]
                        save_png(images[b], path)
            if callback is not None:
                callback(min(start + len(chunk), len(pairs)), len(pairs))
    except NonFiniteError:
        for path in created:
            path.unlink(missing_ok=True)
        made = [out / "images"] + ([] if out_existed else [out])
        for folder in sorted({p.parent for p in created}) + (made if created else []):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: another run's images stay
        raise
    summarise(result)
    if out is not None:
        write_outputs(result, out, config, grid, items, info)
    return result


def _images(backend: DiffusionBackend, negative, prompts: Sequence[str], seeds: Sequence[int], cond: torch.Tensor,
            latents: torch.Tensor, config: EvalConfig) -> torch.Tensor:
    """The images of one batch with one negative (a fixed tensor, or refined per prompt and seed)."""
    if not isinstance(negative, PerSampleNegative):
        return render(backend, cond, negative.to(backend.device), latents, config.num_inference_steps,
                      config.guidance_scale, config.mixed_precision)
    from .refine import RefineConfig, refine_batch

    rcfg = RefineConfig(max_steps=negative.max_steps, patience=negative.patience, lr=negative.lr,
                        num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale,
                        height=config.height, width=config.width, mixed_precision=config.mixed_precision)
    refined = refine_batch(backend, negative.reward, prompts, negative.init, list(seeds), rcfg, conds=cond)
    return torch.cat([r.image for r in refined]).to(backend.device)


# ---------------------------------------------------------------------------------------------- outputs
def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "negative"


def _thumb(image: torch.Tensor, size: int) -> torch.Tensor:
    img = image.detach().float().cpu().unsqueeze(0)
    if max(img.shape[-2:]) != size:
        img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", antialias=True,
                                              align_corners=False)
    return img[0].clamp(0, 1)


def make_grid(grid: dict[tuple[int, str], torch.Tensor], rows: list[int], labels: list[str],
              items: Sequence[PromptItem], cell: int):
    """PIL image: header row of negative labels, then one row per prompt (its text on the left)."""
    from PIL import Image, ImageDraw

    left, top, pad = 220, 28, 4
    width = left + len(labels) * (cell + pad)
    height = top + len(rows) * (cell + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(labels):
        draw.text((left + c * (cell + pad) + 4, 8), label[:40], fill="black")
    for r, i in enumerate(rows):
        y = top + r * (cell + pad)
        text = items[i].text
        lines = textwrap.wrap(text, 34, break_long_words=True)[:8]
        draw.multiline_text((6, y + 4), "\n".join(lines), fill="black")
        for c, label in enumerate(labels):
            if (i, label) in grid:
                canvas.paste(to_pil_images(grid[(i, label)])[0], (left + c * (cell + pad), y))
    return canvas


def plot_bars(result: EvalResult, path: Path) -> Path:
    """One panel per metric: groups (and 'all') on x, one bar per negative."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    cols = [*result.groups, ALL] if len(result.groups) > 1 else [ALL]
    fig = Figure(figsize=(max(6.0, 0.6 * len(cols) * max(1, len(result.negatives)) + 3),
                          3.2 * len(result.metrics)), dpi=100)
    width = 0.8 / max(1, len(result.negatives))
    for k, m in enumerate(result.metrics):
        ax = fig.add_subplot(len(result.metrics), 1, k + 1)
        vals = [result.means[m][n][g] for n in result.negatives for g in cols if math.isfinite(result.means[m][n][g])]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        span = (hi - lo) or abs(hi) or 1.0
        bottom = lo - 0.5 * span  # bars start below the lowest mean: differences stay visible for any sign
        for j, neg in enumerate(result.negatives):
            xs = [c + (j - (len(result.negatives) - 1) / 2) * width for c in range(len(cols))]
            heights = [result.means[m][neg][g] - bottom for g in cols]
            bars = ax.bar(xs, heights, width=width, bottom=bottom, label=neg)
            ax.bar_label(bars, labels=[f"{result.means[m][neg][g]:.4g}" for g in cols], fontsize=6, padding=1)
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels(cols)
        ax.set_ylabel(m)
        ax.set_ylim(bottom, hi + 0.35 * span)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_outputs(result: EvalResult, out: Path, config: EvalConfig, grid: dict, items: Sequence[PromptItem],
                  extra: Optional[dict] = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = {"results": out / "results.json", "scores": out / "scores.csv", "summary": out / "summary.csv",
             "grid": out / "grid.png", "bars": out / "bars.png"}
    score_cols = ["prompt_id", "group", "prompt", "seed", "negative", *result.metrics]
    atomic_write(files["scores"], lambda tmp: Path(tmp).write_text(_csv_text(result.rows, score_cols), "utf-8"))
    summary = result.summary_table()
    summary_cols = list(summary[0]) if summary else ["metric", "negative", "group", "mean", "std", "n"]
    atomic_write(files["summary"], lambda tmp: Path(tmp).write_text(_csv_text(summary, summary_cols), "utf-8"))
    rows = sorted({i for i, _ in grid})
    canvas = make_grid(grid, rows, result.negatives, items, config.grid_thumb)
    atomic_write(files["grid"], lambda tmp: canvas.save(tmp, format="PNG"))
    plot_bars(result, files["bars"])
    payload = {"config": asdict(config), "negatives": result.negatives, "metrics": result.metrics,
               "groups": result.groups, "n_prompts": len({r["prompt_id"] for r in result.rows}),
               "n_images_per_negative": len(result.rows) // max(1, len(result.negatives)),
               "means": result.means, "stds": result.stds, "win_rates": result.win_rates,
               "baseline": result.negatives[0], "stopped": result.stopped,
               "protocol_gaps": result.protocol_gaps, **(extra or {})}
    atomic_write(files["results"], lambda tmp: Path(tmp).write_text(
        json.dumps(payload, indent=2, sort_keys=False, allow_nan=True), "utf-8"))
    result.files = {k: str(v) for k, v in files.items()}
