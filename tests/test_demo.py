"""``reneg demo`` on the random test model: every stage runs and writes its files."""
from __future__ import annotations

import json

from reneg.core.cli import main
from reneg.core.demo import DemoSettings, run_demo
from reneg.core.embedding_io import load_embedding
from reneg.core.rewards import build_reward


def test_demo_runs_end_to_end_on_tiny(tiny_backend, tmp_path):
    settings = DemoSettings(train_steps=2, batch_size=2, micro_batch=2, lr=0.3, size=64, ddim_steps=3,
                            refine_steps=2)
    lines: list[str] = []
    summary = run_demo(tiny_backend, build_reward("synthetic"), tmp_path, tiny=True, settings=settings,
                       log=lines.append)
    for name in ("grid.png", "bars.png", "results.json", "global.safetensors", "refined.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert load_embedding(tmp_path / "global.safetensors").tensor.shape == (1, 77, 768)
    refined = load_embedding(tmp_path / "refined.safetensors")
    assert refined.metadata["prompt"] == "a mountain lake reflecting snowy peaks at sunrise"
    trace = summary["refine_trace"]
    assert max(trace) >= trace[0]
    assert set(summary["means"]) == {"null", "reneg-global", "reneg-refined"}
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["model"] == tiny_backend.name and results["demo"] is True
    assert any("refine trace" in line for line in lines)


def test_demo_cli_rejects_unknown_reward(tmp_path, capsys):
    assert main(["demo", "--reward", "nope", "--out", str(tmp_path)]) == 2
    assert "valid names" in capsys.readouterr().err
