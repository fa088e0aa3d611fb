"""``reneg train / refine / evaluate --model tiny --reward tiny`` end to end on CPU (in-process CLI calls)."""
from __future__ import annotations

import json

import pytest
import torch

from reneg.core.cli import main
from reneg.core.embedding_io import load_embedding

SMALL = ["--height", "64", "--width", "64", "--ddim-steps", "3"]


@pytest.fixture()
def prompts(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("a cat\na dog\n# not a prompt\n\na red house\n")
    return f


def test_train_refine_evaluate(tmp_path, prompts, capsys):
    out = tmp_path / "neg.safetensors"
    train = ["train", "--model", "tiny", "--reward", "tiny", "--prompts", str(prompts), "--out", str(out),
             "--steps", "3", "--batch-size", "2", "--micro-batch", "1", "--lr", "0.05", "--last-k", "2",
             "--save-every", "2", "--preview-every", "3", *SMALL]
    assert main(train) == 0
    emb = load_embedding(out)
    assert emb.tensor.shape == (1, 77, 768) and emb.metadata["status"] == "complete"
    assert emb.metadata["reward"] == "tiny" and emb.metadata["init"] == "null-text"
    assert json.loads(emb.metadata["recipe"])["num_inference_steps"] == 3
    assert (tmp_path / "neg.safetensors.state").is_file() and (tmp_path / "neg.log.csv").is_file()
    assert (tmp_path / "neg.rewards.png").is_file() and (tmp_path / "neg.previews" / "step_000003.png").is_file()
    # a finished run resumed is a no-op that keeps the result
    assert main(train + ["--resume"]) == 0
    assert torch.equal(load_embedding(out).tensor, emb.tensor)
    # an existing state is not clobbered by accident
    assert main(train) == 2
    assert "--resume" in capsys.readouterr().err

    refined = tmp_path / "refined.safetensors"
    image = tmp_path / "refined.png"
    assert main(["refine", "--model", "tiny", "--reward", "tiny", "--prompt", "a lighthouse", "--init", str(out),
                 "--out", str(refined), "--image", str(image), "--max-steps", "3", "--lr", "0.05", *SMALL]) == 0
    meta = load_embedding(refined).metadata
    assert meta["kind"] == "per-prompt" and meta["prompt"] == "a lighthouse"
    assert float(meta["best_reward"]) >= float(meta["start_reward"])
    assert image.is_file()

    ev = tmp_path / "eval"
    assert main(["evaluate", "--model", "tiny", "--negatives", f"null,text:blurry, ugly,{out}",
                 "--negatives", str(refined), "--prompts", str(prompts), "--metrics", "tiny,synthetic",
                 "--out", str(ev), "--batch-size", "3", *SMALL]) == 0
    results = json.loads((ev / "results.json").read_text())
    assert results["negatives"] == ["null", "text:blurry, ugly", "neg", "refined"]
    assert results["metrics"] == ["tiny", "synthetic"] and results["n_images_per_negative"] == 3
    for name in ("scores.csv", "summary.csv", "grid.png", "bars.png"):
        assert (ev / name).stat().st_size > 0
    assert "win-rate vs null" in capsys.readouterr().out


def test_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    assert main(["train", "--model", "tiny", "--reward", "tiny", "--prompts", str(empty),
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "contains no prompts" in capsys.readouterr().err
    assert main(["refine", "--model", "tiny", "--reward", "nope", "--prompt", "a", "--out",
                 str(tmp_path / "r.safetensors"), *SMALL]) == 2
    assert "Unknown reward" in capsys.readouterr().err
    assert main(["evaluate", "--model", "tiny", "--negatives", "null", "--prompts", str(tmp_path / "missing.txt"),
                 "--metrics", "tiny", "--out", str(tmp_path / "ev")]) == 2
    assert "neither an existing file" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_saves_a_resumable_partial_embedding(tmp_path, prompts):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "neg.safetensors"
    cmd = [sys.executable, "-m", "reneg", "train", "--model", "tiny", "--reward", "synthetic", "--prompts",
           str(prompts), "--out", str(out), "--steps", "100000", "--batch-size", "1", "--micro-batch", "1",
           "--save-every", "1", "--device", "cpu", *SMALL]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        state = tmp_path / "neg.safetensors.state"
        while not state.exists() and proc.poll() is None:  # wait for the first checkpoint
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "continue with --resume" in stdout
    saved = load_embedding(out)
    assert saved.metadata["status"] == "partial" and int(saved.metadata["steps"]) >= 1
    state = torch.load(tmp_path / "neg.safetensors.state", weights_only=True)
    assert state["step"] == int(saved.metadata["steps"])


def test_train_output_errors_come_before_any_model_is_loaded(tmp_path, prompts, monkeypatch, capsys):
    from reneg.core import diffusers_backend

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(diffusers_backend, "load_backend", no_model)
    base = ["train", "--model", "tiny", "--reward", "tiny", "--prompts", str(prompts)]
    assert main([*base, "--out", str(tmp_path / "x.bin")]) == 2
    assert "must be a .safetensors file" in capsys.readouterr().err
    out = tmp_path / "x.safetensors"
    assert main([*base, "--out", str(out), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    (tmp_path / "x.safetensors.state").write_bytes(b"")
    assert main([*base, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
