"""``reneg demo``: every stage runs and writes its files (random tiny model), and on the toy world (the default)
it refines one negative per held-out prompt (learning margins: test_toy_reneg.py)."""
from __future__ import annotations

import json

from reneg.core.cli import main
from reneg.core.commands.demo import demo_world
from reneg.core.demo import DemoSettings, run_demo, toy_prompts
from reneg.core.embedding_io import load_embedding
from reneg.core.rewards import build_reward


def test_demo_runs_end_to_end_on_tiny(tiny_backend, tmp_path):
    settings = DemoSettings(train_steps=2, batch_size=2, micro_batch=2, lr=0.3, size=64, ddim_steps=3,
                            refine_steps=2, eval_prompts=2)
    lines: list[str] = []
    summary = run_demo(tiny_backend, build_reward("synthetic"), tmp_path, world="tiny", settings=settings,
                       log=lines.append)
    for name in ("grid.png", "bars.png", "results.json", "global.safetensors", "refined/00.safetensors",
                 "refined/01.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert load_embedding(tmp_path / "global.safetensors").tensor.shape == (1, 77, 768)
    refined = load_embedding(tmp_path / "refined" / "00.safetensors")
    assert refined.metadata["prompt"] == "a mountain lake reflecting snowy peaks at sunrise"
    assert all(max(trace) >= trace[0] for trace in summary["refine_traces"])
    assert set(summary["means"]) == {"null", "reneg-global", "reneg-refined"}
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["model"] == tiny_backend.name and results["demo"] is True and results["world"] == "tiny"
    assert results["n_prompts"] == 2
    assert sum("refined for" in line for line in lines) == 2


def test_demo_on_the_toy_world_refines_each_held_out_prompt(tmp_path):
    from reneg.core.diffusers_backend import load_backend

    backend = load_backend("toy")
    settings = DemoSettings.for_world("toy")
    settings.train_steps, settings.refine_steps, settings.eval_prompts = 6, 3, 8
    summary = run_demo(backend, build_reward("toy"), tmp_path, world="toy", settings=settings, log=lambda _: None)
    _, items = toy_prompts(8)
    prompts = [load_embedding(tmp_path / "refined" / f"{i:02d}.safetensors").metadata["prompt"] for i in range(8)]
    assert prompts == [it.text for it in items]
    rows = {(r["prompt_id"], r["negative"]): r["toy"] for r in summary["rows"]}
    assert len(rows) == 24  # 8 prompts x null / global / that prompt's refined negative
    assert all(max(trace) >= trace[0] for trace in summary["refine_traces"])
    assert (tmp_path / "grid.png").stat().st_size > 5_000


def test_demo_defaults_to_the_toy_world():
    assert demo_world("toy") == "toy" and demo_world("toy-2") == "toy"
    assert demo_world("tiny") == "tiny" and demo_world("some/sd15") == "real"
    from reneg.core.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert args.model in ("toy", __import__("os").environ.get("RENEG_MODEL"))


def test_demo_cli_rejects_unknown_reward(tmp_path, capsys):
    assert main(["demo", "--reward", "nope", "--out", str(tmp_path)]) == 2
    assert "valid names" in capsys.readouterr().err
