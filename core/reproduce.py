"""The paper's Table 2 / Table 3 comparison in one resumable run (``reneg reproduce``).

Four negatives on shared seeds (prompt ``i`` of a benchmark uses seed ``seed + i``): the null text, a handcrafted
negative prompt (:data:`~.evaluate.HANDCRAFTED_PRESETS`), the global ReNeg embedding, and per-sample refinement
from the global one (:func:`~.refine.refine_batch`, final-image rule: its image is the render of its embedding
with that seed). Benchmarks: the HPSv2 benchmark (4 styles x 800) and Parti-Prompts (1,632), or any local
prompt set. Every finished image is saved as PNG and its scores appended to ``<benchmark>/scores.jsonl``; a
killed run started again with the same settings skips what is done (at most one batch is redone).

Per benchmark folder: ``scores.csv``, ``summary.csv``, ``results.json``, ``grid.png``, ``bars.png`` (as
``reneg evaluate``), ``images/<negative>/*.png``, ``refined/*.safetensors``; at the top: ``table2.md``,
``table2.csv``, ``table3.md`` and ``run.json``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import torch

from .embedding_io import atomic_write, check_compatible, save_embedding
from .errors import RenegError
from .finite_scores import check_finite_scores
from .evaluate import ALL, EvalConfig, EvalResult, _thumb, summarise, write_outputs
from .images import save_png
from .model_boundary import DiffusionBackend, encode_fp32
from .prompts import PromptItem
from .refine import RefineConfig, refine_batch
from .rewards.base import Reward
from .train import batch_latents, render

NULL, HANDCRAFTED, GLOBAL, PER_SAMPLE = "null", "handcrafted", "reneg-global", "reneg-per-sample"
NEGATIVE_TITLES = {NULL: "Null-text", HANDCRAFTED: "Handcrafted negative prompt", GLOBAL: "ReNeg (global)",
                   PER_SAMPLE: "ReNeg (per-sample)"}
#: Published figures beside ours: only numbers copied from the paper with their location. None are sourced in
#: this checkout (the paper's tables could not be read here), so the column stays empty and says so.
PAPER_NUMBERS: dict[tuple[str, str, str], float] = {}
PAPER_NOT_SOURCED = "not sourced"

#: A small offline prompt set in the HPSv2 benchmark's four styles, for CI and smoke runs (``builtin:mini``).
BUILTIN_PROMPT_SETS: dict[str, list[PromptItem]] = {
    "mini": [
        PromptItem("a girl with a red umbrella in the rain, anime style", "anime"),
        PromptItem("a cat samurai standing on a rooftop at night, anime", "anime"),
        PromptItem("concept art of a floating island with waterfalls", "concept-art"),
        PromptItem("a cute robot reading a book in a library, concept art", "concept-art"),
        PromptItem("still life of fruit and flowers, oil on canvas", "paintings"),
        PromptItem("a harbour at sunset, impressionist painting", "paintings"),
        PromptItem("a mountain lake reflecting snowy peaks at sunrise", "photo"),
        PromptItem("a close-up photo of a bee on a sunflower", "photo"),
    ],
}


def builtin_prompt_set(spec: str) -> Optional[list[PromptItem]]:
    """``builtin:NAME`` -> that set, else None."""
    if not spec.lower().startswith("builtin:"):
        return None
    name = spec.split(":", 1)[1].strip().lower()
    if name not in BUILTIN_PROMPT_SETS:
        raise RenegError(f"Unknown built-in prompt set {name!r}; available: {', '.join(BUILTIN_PROMPT_SETS)}.")
    return list(BUILTIN_PROMPT_SETS[name])


@dataclass
class ReproduceConfig:
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512
    seed: int = 0
    batch_size: int = 8            #: images rendered together / prompts refined together
    mixed_precision: str = "no"
    refine: RefineConfig = field(default_factory=RefineConfig)
    grid_prompts: int = 8
    grid_thumb: int = 256

    def settings(self) -> dict:
        """What must match for a resumed run (batch size and grid layout may change)."""
        d = asdict(self)
        for k in ("batch_size", "grid_prompts", "grid_thumb"):
            d.pop(k)
        return d


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _read_done(path: Path) -> dict[tuple[str, int], dict]:
    """Rows of ``scores.jsonl`` by (negative, prompt_id); a torn last line (a kill mid-write) is ignored."""
    done: dict[tuple[str, int], dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if any(isinstance(v, float) and not math.isfinite(v) for v in row.values()):
            continue  # a non-finite score logged by an older version: score that image again
        done[(row["negative"], int(row["prompt_id"]))] = row
    return done


def _append(path: Path, rows: Sequence[dict]) -> None:
    """Append rows; a torn last line left by a kill is ended first, so it cannot swallow the next row."""
    torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a", encoding="utf-8") as fh:
        if torn:
            fh.write("\n")
        for row in rows:
            fh.write(json.dumps(row, allow_nan=True) + "\n")
        fh.flush()


def check_run(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse to mix a run's files with another run's settings (``overwrite`` starts the score logs over)."""
    path = out / "run.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if diff and not overwrite:
            details = "; ".join(f"{k}: saved {saved.get(k)!r} vs now {settings.get(k)!r}" for k in diff)
            raise RenegError(f"{out} holds a run with other settings ({details[:600]}). Use another --out, the "
                             "same settings to continue it, or --overwrite to start its scores over.")
        if diff:
            for log in out.glob("*/scores.jsonl"):
                log.unlink()
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=2, sort_keys=True), "utf-8"))


def reproduce(backend: DiffusionBackend, reward: Reward, metrics: Mapping[str, Reward],
              benchmarks: Mapping[str, Sequence[PromptItem]], global_negative: torch.Tensor, handcrafted: str,
              out_dir: str | Path, config: Optional[ReproduceConfig] = None, *, info: Optional[dict] = None,
              overwrite: bool = False, progress: Optional[Callable[[int, int, str], None]] = None,
              should_stop: Optional[Callable[[], bool]] = None, per_sample: bool = True) -> dict:
    """Run (or continue) the comparison; returns ``{benchmark: EvalResult}`` plus the tables' paths.

    ``reward``: the refinement reward (the paper's: HPSv2.1). ``metrics``: name -> scorer (may include
    ``@benchmark`` protocol scorers). ``progress(done, total, what)`` after each batch.
    """
    config = config or ReproduceConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_compatible(global_negative, backend.context_dim, where=f"model '{backend.name}' (global negative)")
    negatives = {NULL: encode_fp32(backend, [""]).cpu(), HANDCRAFTED: encode_fp32(backend, [handcrafted]).cpu(),
                 GLOBAL: global_negative.detach().float().cpu().reshape(1, *global_negative.shape[-2:])}
    labels = [*negatives, *([PER_SAMPLE] if per_sample else [])]
    settings = {"model": backend.name, "refine_reward": getattr(reward, "name", ""), "metrics": list(metrics),
                "handcrafted": handcrafted, "global_sha": _digest(negatives[GLOBAL]), "negatives": labels,
                **{f"config.{k}": v for k, v in config.settings().items()}}
    check_run(out, json.loads(json.dumps(settings)), overwrite)
    c = config
    refine_cfg = RefineConfig(**{**asdict(c.refine), "num_inference_steps": c.num_inference_steps,
                                 "guidance_scale": c.guidance_scale, "height": c.height, "width": c.width,
                                 "mixed_precision": c.mixed_precision, "selection": "final"})
    total = sum(len(items) for items in benchmarks.values()) * len(labels)
    done_count = 0
    logs = {}
    for name, items in benchmarks.items():
        logs[name] = _read_done(out / name / "scores.jsonl")
        done_count += sum(1 for (neg, i) in logs[name] if neg in labels and i < len(items))
    if progress is not None:
        progress(done_count, total, "resumed" if done_count else "start")
    results: dict = {}
    stopped = False
    for name, items in benchmarks.items():
        bdir = out / name
        bdir.mkdir(parents=True, exist_ok=True)
        log_path, done = bdir / "scores.jsonl", logs[name]
        for label in labels:
            todo = [i for i in range(len(items)) if (label, i) not in done]
            for lo in range(0, len(todo), max(1, c.batch_size)):
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                chunk = todo[lo:lo + c.batch_size]
                prompts = [items[i].text for i in chunk]
                seeds = [c.seed + i for i in chunk]
                extra: list[dict] = [{} for _ in chunk]
                if label == PER_SAMPLE:
                    res = refine_batch(backend, reward, prompts, negatives[GLOBAL], seeds, refine_cfg)
                    images = torch.cat([r.image for r in res]).float()
                else:
                    cond = backend.encode_prompts(prompts)
                    latents = batch_latents(backend, seeds, c.height, c.width)
                    images = render(backend, cond, negatives[label].to(backend.device), latents,
                                    c.num_inference_steps, c.guidance_scale, c.mixed_precision).cpu()
                with torch.no_grad():
                    scores = {m: r.score(images.to(backend.device), prompts).float().cpu() for m, r in metrics.items()}
                check_finite_scores(images, scores, prompts, seeds, label,
                                    f"nothing of this batch was written (the {len(done)} rows scored before it are "
                                    "kept, and a rerun continues after them)")
                if label == PER_SAMPLE:
                    for j, (i, r) in enumerate(zip(chunk, res)):
                        save_embedding(bdir / "refined" / f"{i:05d}.safetensors", r.best, overwrite=True,  # redone after a kill
                                       base_model=backend.name,
                                       reward=getattr(reward, "name", ""), kind="per-prompt", prompt=r.prompt,
                                       seed=str(r.seed), init=GLOBAL, start_reward=f"{r.start_reward:.6g}",
                                       best_reward=f"{r.best_reward:.6g}", steps=r.best_step)
                        extra[j] = {"refine_start": r.start_reward, "refine_best": r.best_reward,
                                    "refine_best_step": r.best_step, "refine_iterates": len(r.trace)}
                rows = []
                for j, i in enumerate(chunk):
                    save_png(images[j], bdir / "images" / label / f"{i:05d}.png")
                    rows.append({"prompt_id": i, "group": items[i].group, "prompt": items[i].text,
                                 "seed": seeds[j], "negative": label,
                                 **{m: float(scores[m][j]) for m in metrics}, **extra[j]})
                _append(log_path, rows)  # after the PNGs: a logged row always has its image
                for row in rows:
                    done[(label, row["prompt_id"])] = row
                done_count += len(chunk)
                if progress is not None:
                    progress(done_count, total, f"{name}/{label}")
            if stopped:
                break
        results[name] = _finish_benchmark(bdir, name, items, labels, list(metrics), done, c, info)
        if stopped:
            break
    tables = write_tables(out, results, list(metrics))
    return {"results": results, "tables": tables, "stopped": stopped, "done": done_count, "total": total}


def _finish_benchmark(bdir: Path, name: str, items: Sequence[PromptItem], labels: list[str], metrics: list[str],
                      done: dict, c: ReproduceConfig, info: Optional[dict]) -> EvalResult:
    rows = [done[(label, i)] for label in labels for i in range(len(items)) if (label, i) in done]
    groups = list(dict.fromkeys(it.group for it in items))
    result = EvalResult(labels, metrics, groups, rows)
    summarise(result)
    grid = {}
    from PIL import Image

    for i in range(min(c.grid_prompts, len(items))):
        for label in labels:
            png = bdir / "images" / label / f"{i:05d}.png"
            if png.is_file():
                import numpy as np

                arr = torch.from_numpy(np.asarray(Image.open(png).convert("RGB"))).permute(2, 0, 1).float() / 255
                grid[(i, label)] = _thumb(arr, c.grid_thumb)
    ecfg = EvalConfig(num_inference_steps=c.num_inference_steps, guidance_scale=c.guidance_scale, height=c.height,
                      width=c.width, seed=c.seed, batch_size=c.batch_size, mixed_precision=c.mixed_precision,
                      grid_prompts=c.grid_prompts, grid_thumb=c.grid_thumb, save_images=True)
    write_outputs(result, bdir, ecfg, grid, items, {"benchmark": name, "refine": asdict(c.refine),
                                                     "complete": len(rows) == len(labels) * len(items),
                                                     **(info or {})})
    return result


def _fmt(v: float) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.4f}"


def write_tables(out: Path, results: Mapping[str, EvalResult], metrics: list[str]) -> dict:
    """``table2.md`` / ``table2.csv`` (means per style and benchmark; paper column) and ``table3.md`` (win rates)."""
    lines = ["# ReNeg reproduction — Table 2 (mean scores)", "",
             "Columns: per-group means of each benchmark, the mean over its groups (the HPSv2 benchmark's "
             "'average'), then the paper's figure for that row. Paper column: "
             f"**{PAPER_NOT_SOURCED}** — the published numbers were not available to this checkout, so none are "
             "shown (never invented).", ""]
    csv_rows = []
    for m in metrics:
        header, cols = ["Negative"], []
        for bench, res in results.items():
            groups = res.groups if len(res.groups) > 1 else []
            cols += [(bench, g) for g in groups] + [(bench, "mean_of_groups" if groups else ALL)]
            header += [f"{bench}: {g}" for g in groups] + [f"{bench}: {'average' if groups else 'mean'}"]
        header.append(f"paper ({PAPER_NOT_SOURCED})")
        lines += [f"## {m}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        negatives = next(iter(results.values())).negatives if results else []
        for neg in negatives:
            vals = [results[b].means[m][neg].get(g, float("nan")) for b, g in cols]
            paper = PAPER_NUMBERS.get((m, neg, "average"))
            lines.append("| " + " | ".join([NEGATIVE_TITLES.get(neg, neg), *map(_fmt, vals),
                                            _fmt(paper) if paper is not None else ""]) + " |")
            csv_rows += [{"metric": m, "negative": neg, "benchmark": b, "group": g, "mean": v,
                          "n": sum(1 for r in results[b].rows if r["negative"] == neg
                                   and (g in (ALL, "mean_of_groups") or r["group"] == g))}
                         for (b, g), v in zip(cols, vals)]
        lines.append("")
    t3 = ["# ReNeg reproduction — Table 3 (win rates, per style)", "",
          "Share of prompts (same seed) on which the first negative scores higher than the second; ties count half.", ""]
    pairs = [(GLOBAL, NULL), (GLOBAL, HANDCRAFTED), (PER_SAMPLE, NULL), (PER_SAMPLE, HANDCRAFTED), (PER_SAMPLE, GLOBAL)]
    for m in metrics:
        for bench, res in results.items():
            groups = res.groups if len(res.groups) > 1 else []
            head = ["pair", *groups, "all"]
            t3 += [f"## {m} — {bench}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for a, b in pairs:
                if a not in res.negatives or b not in res.negatives:
                    continue
                cells = [_fmt(win_rate(res.rows, m, a, b, g)) for g in groups] + [_fmt(win_rate(res.rows, m, a, b))]
                t3.append(f"| {NEGATIVE_TITLES[a]} vs {NEGATIVE_TITLES[b]} | " + " | ".join(cells) + " |")
            t3.append("")
    files = {"table2": out / "table2.md", "table2_csv": out / "table2.csv", "table3": out / "table3.md"}
    atomic_write(files["table2"], lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", "utf-8"))
    atomic_write(files["table3"], lambda tmp: Path(tmp).write_text("\n".join(t3) + "\n", "utf-8"))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["metric", "negative", "benchmark", "group", "mean", "n"])
    writer.writeheader()
    writer.writerows(csv_rows)
    atomic_write(files["table2_csv"], lambda tmp: Path(tmp).write_text(buf.getvalue(), "utf-8"))
    return {k: str(v) for k, v in files.items()}


def win_rate(rows: Sequence[dict], metric: str, a: str, b: str, group: Optional[str] = None) -> float:
    """P(score_a > score_b) over the prompts both have (ties half), optionally within one group."""
    sa = {r["prompt_id"]: r[metric] for r in rows if r["negative"] == a and (group is None or r["group"] == group)}
    sb = {r["prompt_id"]: r[metric] for r in rows if r["negative"] == b and (group is None or r["group"] == group)}
    keys = sa.keys() & sb.keys()
    if not keys:
        return float("nan")
    return sum(1.0 if sa[k] > sb[k] else 0.5 if sa[k] == sb[k] else 0.0 for k in keys) / len(keys)
