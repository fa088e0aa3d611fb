"""benchmarks/gpu_suite.py: the one-call GPU suite's plumbing on CPU (tiny models, 3 steps) — every row runs,
the JSON carries the fields issue 13 asks for, and the target table is printed. Speed is not checked here."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_writes_every_headline_field(tmp_path, capsys):
    suite = _load()
    rc = suite.main(["--cpu-smoke", "--out", str(tmp_path), "--repeats", "1", "--train", "2c", "--refine-steps", "2", "--commit", "abc"])
    data = json.loads((tmp_path / "gpu_suite.json").read_text())
    printed = capsys.readouterr().out
    assert rc == 0, data["rows"]
    for row in ("pipeline_generation", "generation_text_negative", "generation_embedding", "train_mb2_ckpt",
                "refine_b1", "refine_batched", "sdxl_generation", "sdxl_train_mb2_ckpt"):
        assert "error" not in data["rows"][row] and data["rows"][row].get("seconds", 1) > 0, row
    summary = data["summary"]
    assert summary["train_samples_per_s"] > 0 and summary["refine_x_generation"] > 0
    assert summary["embedding_over_text_negative_generation"] > 0
    assert summary["sdxl_train_samples_per_s"] > 0 and data["rows"]["sdxl_train_mb2_ckpt"]["resolution"] == 64
    assert data["commit"] == "abc" and data["torch"] and data["date"] and data["cpu_smoke"] is True
    assert "train_samples_per_s" in printed and "refine_x_generation" in printed
    for key in ("train_samples_per_s", "refine_x_generation", "refine_peak_gb",
                "batched_refine_x_generation_per_prompt"):
        assert key in summary
