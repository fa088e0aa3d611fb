"""The cost benchmark (benchmarks/bench_reneg.py): CPU path runs and reports ratios; the --gpu model builders
produce the real SD1.5 / ViT-H-14 architectures (checked on the meta device: no memory, no GPU needed)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_reneg.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_reneg", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_benchmark_reports_side_by_side_figures(capsys, tmp_path):
    bench = _load()
    out = tmp_path / "bench.json"
    results = bench.main(["--ddim-steps", "3", "--repeats", "1", "--micro-batch", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    for text in ("generation (unit", "training step (micro-batch 2)", "refinement (10 steps + final image)",
                 "x one generation", "peak RSS"):
        assert text in printed
    assert results["refine_10_steps_plus_image"]["iterates"] == 11
    assert results["train_step"]["samples_per_s"] > 0 and results["generation"]["seconds"] > 0
    ratios = results["ratios"]
    assert ratios["refine_over_generation"] == results["refine_10_steps_plus_image"]["seconds"] / \
        results["generation"]["seconds"]
    assert out.is_file()
    # issue 10: both selection rules and the batching ratio, same run
    assert results["refine_final"]["iterates"] == 11 and ratios["refine_final_over_generation"] > 0
    assert results["refine_batching"]["speedup"] == results["refine_batching"]["one_by_one_seconds"] / \
        results["refine_batching"]["batched_seconds"]
    assert "final-image rule" in printed and "x faster than one by one" in printed


def test_gpu_flag_builds_full_size_sd15_and_vit_h14():
    bench = _load()
    modules = bench.build_sd15_modules("meta")
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items()}
    # SD1.5 (runwayml/stable-diffusion-v1-5): UNet 859.52M, VAE 83.65M, CLIP ViT-L/14 text encoder 123.06M
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert modules["unet"].config.cross_attention_dim == 768
    from reneg.core.rewards.hps import HPS_ARCH, build_open_clip

    with torch.device("meta"):
        vit_h = build_open_clip(HPS_ARCH)
    assert sum(p.numel() for p in vit_h.parameters()) == 986_109_441  # open_clip ViT-H-14 (HPSv2's backbone)


def test_rule_comparison_scores_the_final_images(backend):
    """--compare-rules: start vs refined final-image reward per rule, rescored independently; the final rule never
    ends below its start (the guarantee), the proxy rule may."""
    from reneg.core.rewards import build_reward

    bench = _load()
    prompts = ["a cat", "a lighthouse at dusk"]
    null = backend.encode_prompts([""]).float()
    out = bench.compare_rules(backend, build_reward("tiny"), prompts, null, 64, 3, 7.5, 0.05, max_steps=2,
                              patience=2)
    assert out["prompts"] == prompts and len(out["final"]["refined"]) == 2
    assert out["final"]["worse"] == 0
    for rule in ("final", "proxy"):
        x = out[rule]
        assert x["worse"] + x["better"] <= 2 and x["seconds"] > 0
        assert abs(x["mean_gain"] - (x["refined_mean"] - out["start_mean"])) < 1e-5
    assert "machine" not in out
