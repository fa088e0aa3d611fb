"""`reneg refine --prompts FILE`: batched refinement, one embedding + image per prompt, an index."""
from __future__ import annotations

import csv
import json

import torch

from reneg.core.cli import main
from reneg.core.embedding_io import load_embedding
from reneg.core.refine import refine_negative
from reneg.core.rewards import build_reward

SMALL = ["--model", "tiny", "--reward", "tiny", "--ddim-steps", "3", "--height", "64", "--width", "64",
         "--max-steps", "2", "--lr", "0.05", "--seed", "4"]


def test_refine_prompts_file_writes_one_result_per_prompt_and_an_index(tmp_path, backend, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na lighthouse at dusk\na bowl of fruit\n")
    out = tmp_path / "refined"
    assert main(["refine", *SMALL, "--prompts", str(prompts), "--out", str(out), "--batch-size", "2"]) == 0
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert [r["prompt"] for r in rows] == ["a cat", "a lighthouse at dusk", "a bowl of fruit"]
    assert [int(r["seed"]) for r in rows] == [4, 5, 6]
    index = json.loads((out / "index.json").read_text())
    assert index["config"]["selection"] == "final" and len(index["refinements"]) == 3
    for r in rows:
        assert float(r["best_reward"]) >= float(r["start_reward"])
        assert (out / r["image"]).is_file()
        emb = load_embedding(out / r["embedding"])
        assert emb.metadata["prompt"] == r["prompt"] and emb.metadata["kind"] == "per-prompt"
    # a batched row equals the single-prompt refinement of that prompt and seed
    single = refine_negative(backend, build_reward("tiny"), "a bowl of fruit", backend.encode_prompts([""]).float(),
                             seed=6, max_steps=2, lr=0.05, num_inference_steps=3, height=64, width=64)
    assert torch.allclose(load_embedding(out / rows[2]["embedding"]).tensor, single.best, atol=1e-5)


def test_refine_needs_exactly_one_of_prompt_and_prompts(tmp_path, capsys):
    assert main(["refine", *SMALL, "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--prompt TEXT" in capsys.readouterr().err
    f = tmp_path / "p.txt"
    f.write_text("a cat\n")
    assert main(["refine", *SMALL, "--prompts", str(f), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "folder" in capsys.readouterr().err
