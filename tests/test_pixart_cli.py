"""reneg generate/train/refine/evaluate on tiny-pixart: generate equals PixArtAlphaPipeline + DDIM; the mask is kept."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reneg.core.cli import main
from reneg.core.embedding_io import load_embedding
from reneg.core.pixart_backend import attention_mask_of

PROMPT = "a fox in the snow"
SMALL = ["--height", "64", "--width", "64"]
EMPTY_MASK = "1" + "0" * 119


@pytest.fixture(scope="module")
def pixart():
    from reneg.core.tiny_pixart import load_tiny_pixart_backend

    return load_tiny_pixart_backend()


def _pipeline_images(pixart, steps, guidance, **negative):
    pipe = pixart.pipeline()
    emb, mask, _, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, clean_caption=False)
    kwargs = dict(prompt_embeds=emb, prompt_attention_mask=mask) if "negative_prompt_embeds" in negative else dict(
        prompt=PROMPT)
    return pipe(**kwargs, **negative, num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
                generator=torch.Generator().manual_seed(0), use_resolution_binning=False, clean_caption=False,
                output_type="np").images[0]


def test_generate_with_released_file_equals_pipeline(tmp_path, pixart, released_dir, capsys):
    neg_file = released_dir / "pixart-alpha_reneg_emb.bin"
    out = tmp_path / "fox.png"
    assert main(["generate", "--model", "tiny-pixart", "--prompt", PROMPT, "--negative", str(neg_file), "--seed", "0",
                 "--steps", "4", "--guidance", "4.5", "--out", str(out), *SMALL]) == 0
    ours = np.asarray(Image.open(out)).astype(np.int16)
    neg = load_embedding(neg_file).tensor
    empty = torch.tensor([[1] + [0] * 119])
    ref = _pipeline_images(pixart, 4, 4.5, negative_prompt=None, negative_prompt_embeds=neg,
                           negative_prompt_attention_mask=empty)
    ref_png = (ref * 255).round().astype(np.int16)  # diffusers' numpy_to_pil rounding
    assert np.abs(ours - ref_png).max() == 0
    # the mask is what makes them equal: the same file fully attended gives another image
    full = _pipeline_images(pixart, 4, 4.5, negative_prompt=None, negative_prompt_embeds=neg,
                            negative_prompt_attention_mask=torch.ones_like(empty))
    assert np.abs(full - ref).max() > 1e-3


def test_generate_with_text_negative_equals_pipeline(tmp_path, pixart):
    out = tmp_path / "t.png"
    assert main(["generate", "--model", "tiny-pixart", "--prompt", PROMPT, "--negative-prompt", "blurry, low quality",
                 "--steps", "3", "--guidance", "4.5", "--out", str(out), *SMALL]) == 0
    ref = _pipeline_images(pixart, 3, 4.5, negative_prompt="blurry, low quality")
    assert np.abs(np.asarray(Image.open(out)).astype(np.int16) - (ref * 255).round().astype(np.int16)).max() == 0


def test_latents_equal_pipeline_bitwise(pixart, released_dir):
    from reneg.core.ddim import initial_latents, sample

    neg = load_embedding(released_dir / "pixart-alpha_reneg_emb.bin").tensor
    ours = sample(pixart, pixart.encode_prompts([PROMPT]), neg, initial_latents(pixart, 1, 64, 64, 0), 5, 4.5)
    pipe = pixart.pipeline()
    emb, mask, _, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, clean_caption=False)
    ref = pipe(prompt_embeds=emb, prompt_attention_mask=mask, negative_prompt=None, negative_prompt_embeds=neg,
               negative_prompt_attention_mask=torch.tensor([[1] + [0] * 119]), num_inference_steps=5,
               guidance_scale=4.5, height=64, width=64, generator=torch.Generator().manual_seed(0),
               use_resolution_binning=False, output_type="latent").images
    assert (ours - ref).abs().max().item() == 0.0


def test_train_and_refine_keep_the_mask(tmp_path, released_dir):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na red house\n")
    common = ["--model", "tiny-pixart", "--reward", "tiny", "--ddim-steps", "2", "--lr", "0.05", *SMALL]
    out = tmp_path / "neg.safetensors"
    assert main(["train", *common, "--prompts", str(prompts), "--out", str(out), "--steps", "2", "--batch-size", "2",
                 "--micro-batch", "2", "--last-k", "2", "--init",
                 str(released_dir / "pixart-alpha_reneg_emb.bin")]) == 0
    emb = load_embedding(out)
    released = load_embedding(released_dir / "pixart-alpha_reneg_emb.bin").tensor
    assert emb.metadata["family"] == "pixart-alpha" and emb.metadata["attention_mask"] == EMPTY_MASK
    assert not torch.equal(emb.tensor[0, 0], released[0, 0])      # the attended row was learned
    assert all(torch.equal(emb.tensor[0, 1], emb.tensor[0, i]) for i in range(2, 120))  # padding untouched
    refined = tmp_path / "refined.safetensors"
    assert main(["refine", *common, "--prompt", "a lighthouse", "--init", str(out), "--out", str(refined),
                 "--max-steps", "2"]) == 0
    meta = load_embedding(refined).metadata
    assert meta["attention_mask"] == EMPTY_MASK and float(meta["best_reward"]) >= float(meta["start_reward"])
    ev = tmp_path / "eval"
    assert main(["evaluate", "--model", "tiny-pixart", "--negatives", f"null,text:blurry,{out}", "--prompts",
                 str(prompts), "--metrics", "tiny", "--out", str(ev), "--ddim-steps", "2", *SMALL]) == 0
    assert (ev / "results.json").is_file() and (ev / "grid.png").stat().st_size > 0


def test_train_from_null_text_learns_under_the_empty_prompt_mask(tmp_path, pixart):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    out = tmp_path / "neg.safetensors"
    assert main(["train", "--model", "tiny-pixart", "--reward", "tiny", "--prompts", str(prompts), "--out", str(out),
                 "--steps", "1", "--batch-size", "1", "--micro-batch", "1", "--ddim-steps", "2", "--last-k", "1",
                 "--lr", "0.05", *SMALL]) == 0
    t = load_embedding(out).tensor
    assert t[0, 1:].abs().max() == 0 and attention_mask_of(t).sum() == 1
    assert not torch.equal(t[0, 0], pixart.encode_prompts([""])[0, 0].float())


def test_family_errors_in_the_cli(tmp_path, released_dir, capsys):
    assert main(["generate", "--model", "tiny", "--prompt", "x", "--negative",
                 str(released_dir / "pixart-alpha_reneg_emb.bin"), "--steps", "1", "--out", str(tmp_path / "a.png"),
                 *SMALL]) == 2
    assert "4096-wide" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny-pixart", "--prompt", "x", "--negative",
                 str(released_dir / "sd1.5_reneg_emb.bin"), "--steps", "1", "--out", str(tmp_path / "b.png"),
                 *SMALL]) == 2
    err = capsys.readouterr().err
    assert "768-wide" in err and "expects 4096-wide" in err
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()
