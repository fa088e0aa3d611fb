"""reneg generate/train/refine/evaluate on tiny-xl: generate equals StableDiffusionXLPipeline + DDIM with
``negative_prompt_embeds`` + ``negative_pooled_prompt_embeds``; files carry both tensors; resume; family errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reneg.core.checkpoint import state_path
from reneg.core.cli import main
from reneg.core.embedding_io import load_embedding, save_embedding
from reneg.core.sdxl_backend import pack, unpack

PROMPT = "a fox in the snow"
SMALL = ["--height", "64", "--width", "64"]


@pytest.fixture(scope="module")
def xl():
    from reneg.core.tiny_sdxl import load_tiny_sdxl_backend

    return load_tiny_sdxl_backend()


@pytest.fixture()
def sdxl_file(xl, tmp_path):
    """An SDXL negative that is no text encoding: "ugly" moved off the text manifold in both parts."""
    ctx, pooled = unpack(xl.encode_prompts_fp32(["ugly"]))
    gen = torch.Generator().manual_seed(7)
    neg = pack(ctx + 0.3 * torch.randn(ctx.shape, generator=gen), pooled + 0.3 * torch.randn(pooled.shape, generator=gen))
    return save_embedding(tmp_path / "neg.safetensors", neg, base_model="tiny-xl")


def _pipeline(xl, steps, guidance, output_type="np", **negative):
    return xl.pipeline()(prompt=PROMPT, **negative, num_inference_steps=steps, guidance_scale=guidance, height=64,
                         width=64, generator=torch.Generator().manual_seed(0), output_type=output_type).images


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int16)


def test_generate_with_an_sdxl_file_equals_the_pipeline(tmp_path, xl, sdxl_file):
    out = tmp_path / "fox.png"
    assert main(["generate", "--model", "tiny-xl", "--prompt", PROMPT, "--negative", str(sdxl_file), "--seed", "0",
                 "--steps", "4", "--guidance", "5", "--out", str(out), *SMALL]) == 0
    emb = load_embedding(sdxl_file)
    ref = _pipeline(xl, 4, 5.0, negative_prompt_embeds=emb.context, negative_pooled_prompt_embeds=emb.pooled)[0]
    ref_png = (ref * 255).round().astype(np.int16)  # diffusers' numpy_to_pil rounding
    diff = np.abs(_png(out) - ref_png).max()
    assert diff == 0, f"max abs PNG difference {diff}"
    # both parts of the pair matter: the same context with the null text's pooled gives another image
    _, null_pooled = unpack(xl.encode_prompts_fp32([""]))
    other = _pipeline(xl, 4, 5.0, negative_prompt_embeds=emb.context, negative_pooled_prompt_embeds=null_pooled)[0]
    assert np.abs(other - ref).max() > 1e-3


def test_latents_equal_the_pipeline_bitwise(xl, sdxl_file):
    from reneg.core.ddim import initial_latents, sample

    emb = load_embedding(sdxl_file)
    ours = sample(xl, xl.encode_prompts([PROMPT]), emb.tensor, initial_latents(xl, 1, 64, 64, 0), 5, 6.0)
    ref = _pipeline(xl, 5, 6.0, output_type="latent", negative_prompt_embeds=emb.context,
                    negative_pooled_prompt_embeds=emb.pooled)
    assert (ours - ref).abs().max().item() == 0.0


def test_generate_with_text_negatives_equals_the_pipeline(tmp_path, xl):
    for text in ("blurry, low quality", ""):  # "" given explicitly: encoded, not SDXL's zeroed default
        out = tmp_path / "t.png"
        args = ["--negative-prompt", text] if text else []
        assert main(["generate", "--model", "tiny-xl", "--prompt", PROMPT, *args, "--steps", "3", "--guidance",
                     "4.5", "--out", str(out), "--overwrite", *SMALL]) == 0
        ref = _pipeline(xl, 3, 4.5, negative_prompt=text)[0]
        assert np.abs(_png(out) - (ref * 255).round().astype(np.int16)).max() == 0


def test_train_refine_evaluate_on_tiny_xl(tmp_path, xl, sdxl_file):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na red house\n")
    common = ["--model", "tiny-xl", "--reward", "tiny", "--ddim-steps", "2", "--lr", "0.05", *SMALL]
    out = tmp_path / "learned.safetensors"
    assert main(["train", *common, "--prompts", str(prompts), "--out", str(out), "--steps", "2", "--batch-size", "2",
                 "--micro-batch", "1", "--last-k", "2", "--gradient-checkpointing"]) == 0
    emb = load_embedding(out)
    start = xl.encode_prompts_fp32([""])
    assert emb.metadata["family"] == "sdxl" and emb.metadata["status"] == "complete"
    assert emb.context.shape == (1, 77, 2048) and emb.pooled.shape == (1, 1280)
    assert not torch.equal(emb.context, unpack(start)[0]) and not torch.equal(emb.pooled, unpack(start)[1])
    state = torch.load(state_path(out), weights_only=True)
    assert state["negative"].shape == (1, 78, 2048) and state["negative"][0, 77, 1280:].abs().max() == 0
    assert json.loads(emb.metadata["recipe"])["freeze_pooled"] is False

    frozen = tmp_path / "frozen.safetensors"
    assert main(["train", *common, "--prompts", str(prompts), "--out", str(frozen), "--steps", "2", "--batch-size",
                 "1", "--last-k", "2", "--init", str(sdxl_file), "--freeze-pooled"]) == 0
    f, init = load_embedding(frozen), load_embedding(sdxl_file)
    assert torch.equal(f.pooled, init.pooled) and not torch.equal(f.context, init.context)
    assert json.loads(f.metadata["recipe"])["freeze_pooled"] is True

    refined = tmp_path / "refined.safetensors"
    image = tmp_path / "refined.png"
    assert main(["refine", *common, "--prompt", "a lighthouse", "--init", str(out), "--out", str(refined),
                 "--image", str(image), "--max-steps", "2"]) == 0
    r = load_embedding(refined)
    assert r.metadata["family"] == "sdxl" and r.pooled is not None
    assert float(r.metadata["best_reward"]) >= float(r.metadata["start_reward"]) and image.is_file()
    refined_frozen = tmp_path / "refined_frozen.safetensors"
    assert main(["refine", *common, "--prompt", "a lighthouse", "--init", str(sdxl_file), "--out",
                 str(refined_frozen), "--max-steps", "2", "--freeze-pooled", "--selection", "proxy"]) == 0
    assert torch.equal(load_embedding(refined_frozen).pooled, init.pooled)

    ev = tmp_path / "eval"
    assert main(["evaluate", "--model", "tiny-xl", "--negatives", f"null,text:blurry,{out}", "--prompts",
                 str(prompts), "--metrics", "tiny", "--out", str(ev), "--ddim-steps", "2", *SMALL]) == 0
    results = json.loads((ev / "results.json").read_text())
    assert results["negatives"] == ["null", "text:blurry", "learned"]
    assert (ev / "grid.png").stat().st_size > 0


def test_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path, xl):
    from reneg.core.rewards import build_reward
    from reneg.core.train import TrainCallbacks, TrainConfig, train_global

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na red house\n")
    args = ["train", "--model", "tiny-xl", "--reward", "tiny", "--prompts", str(prompts), "--steps", "3",
            "--batch-size", "2", "--micro-batch", "1", "--ddim-steps", "2", "--last-k", "2", "--lr", "0.05", *SMALL]
    full = tmp_path / "full.safetensors"
    assert main([*args, "--out", str(full)]) == 0
    part = tmp_path / "part.safetensors"
    config = TrainConfig(steps=3, batch_size=2, micro_batch=1, num_inference_steps=2, last_k=2, lr=0.05, height=64,
                         width=64)
    polls = []
    stopped = train_global(xl, build_reward("tiny"), ["a cat", "a red house"], config,
                           TrainCallbacks(should_stop=lambda: polls.append(1) or len(polls) > 1), out=part)
    assert stopped.stopped and stopped.step == 1 and load_embedding(part).metadata["status"] == "partial"
    assert main([*args, "--out", str(part), "--resume"]) == 0
    done, ref = load_embedding(part), load_embedding(full)
    assert done.metadata["status"] == "complete" and done.metadata["family"] == "sdxl"
    assert torch.equal(done.context, ref.context) and torch.equal(done.pooled, ref.pooled)


def test_family_errors_in_the_cli(tmp_path, released_dir, sdxl_file, capsys):
    assert main(["generate", "--model", "tiny-xl", "--prompt", "x", "--negative",
                 str(released_dir / "sd1.5_reneg_emb.bin"), "--steps", "1", "--out", str(tmp_path / "a.png"),
                 *SMALL]) == 2
    err = capsys.readouterr().err
    assert "768-wide" in err and "expects 2048-wide" in err and "use an SDXL negative" in err
    assert main(["generate", "--model", "tiny", "--prompt", "x", "--negative", str(sdxl_file), "--steps", "1",
                 "--out", str(tmp_path / "b.png"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "2048-wide" in err and "expects 768-wide" in err and "need an SDXL model" in err
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    assert main(["train", "--model", "tiny", "--reward", "tiny", "--prompts", str(prompts), "--out",
                 str(tmp_path / "c.safetensors"), "--freeze-pooled", "--steps", "1", "--batch-size", "1",
                 "--ddim-steps", "1", *SMALL]) == 2
    assert "SDXL models only" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("a.png", "b.png", "c.safetensors"))
