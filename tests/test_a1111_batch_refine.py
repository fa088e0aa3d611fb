"""A1111/Forge 'refine for this prompt' with batch size > 1, on a tiny model of the real ldm classes (no webui):
one refined negative per image (its prompt and seed) from one batched refinement, applied to the matching uncond
row; per-image infotext; rewards in fp32 whatever the webui's precision; the null-text start encoded in fp32."""
from __future__ import annotations

import copy
import json
import pickle
import warnings

import pytest
import torch

pytest.importorskip("pytorch_lightning", reason="ldm's LatentDiffusion needs pytorch_lightning")
from a1111_tiny_checkpoint import ensure_ldm_importable  # noqa: E402

ensure_ldm_importable()
pytest.importorskip("ldm.models.diffusion.ddpm", reason="needs PyPI stable-diffusion-sdkit (pip install --no-deps)")

from reneg.a1111_extension import batch_refine, library  # noqa: E402
from reneg.a1111_extension.fp32 import fp32_module, fp32_reward  # noqa: E402
from reneg.a1111_extension.model_adapter import LdmBackend  # noqa: E402
from reneg.a1111_extension.script_logic import (KEY_REFINE_SKIPPED, KEY_REFINE_STEPS, KEY_REFINED,  # noqa: E402
                                                ScriptArgs, args_from_infotext, refine_infotext)
from a1111_tiny_checkpoint import build_ldm, write_text_encoder  # noqa: E402
from reneg.a1111_extension.train_logic import run_training  # noqa: E402
from reneg.a1111_extension.uncond import UncondPlan, replace_tensor  # noqa: E402
from reneg.core.model_boundary import encode_fp32  # noqa: E402
from reneg.core.refine import RefineConfig, refine_batch, refine_negative  # noqa: E402
from reneg.core.rewards import build_reward  # noqa: E402
from reneg.core.train import TrainConfig  # noqa: E402
from test_a1111_train import backend  # noqa: E402,F401  (the tiny ldm backend fixture)

CONFIG = dict(max_steps=2, patience=2, lr=5e-2, num_inference_steps=3, guidance_scale=5.0, height=64, width=64)
PROMPTS = ["a red cube", "a blue ball", "a red cube"]
SEEDS = [3, 4, 5]


@pytest.fixture(scope="module")
def reward():
    return fp32_reward(build_reward("synthetic"))


def _key(prompt, seed):
    return ("model", "hash", prompt, seed)


def _run(backend, reward, cache, calls, prompts=PROMPTS, seeds=SEEDS, **kw):
    def counted(*args, **kwargs):
        calls.append(len(args[2]))
        return refine_batch(*args, **kwargs)

    with torch.no_grad():  # the webui's processing runs without grad: the adapter must enable it itself
        with torch.enable_grad():
            return batch_refine.refine_rows(backend, reward, prompts, seeds, backend.encode_prompts([""]).float(),
                                            RefineConfig(**CONFIG), key_of=_key, cache=cache, refine=counted, **kw)


def test_one_refined_negative_per_image_in_one_batched_call(backend, reward):
    cache, calls = library.RefineCache(), []
    out = _run(backend, reward, cache, calls)
    assert calls == [3] and not out.stopped and len(out.fresh) == 3 and len(cache) == 3
    init = backend.encode_prompts([""]).float()
    for i, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS)):
        got = out.results[i]
        assert (got.prompt, got.seed) == (prompt, seed) and torch.equal(out.rows[i], got.best)
        alone = refine_negative(backend, reward, prompt, init, seed=seed, **CONFIG)
        assert got.best_step == alone.best_step and got.trace == pytest.approx(alone.trace, rel=1e-4, abs=1e-5)
        moved = float((alone.best - init).norm())
        assert float((got.best - alone.best).norm()) <= 1e-2 * max(moved, 1e-8)
    # the same prompt with another seed is another image: its own refinement
    assert not torch.equal(out.rows[0], out.rows[2])
    # applied row by row: uncond row i of the batch becomes image i's refined negative
    plan = UncondPlan(init)
    plan.set_negative(library.stack_rows(out.rows))
    uncond = replace_tensor(torch.zeros(3, 77, backend.context_dim), plan)
    for i in range(3):
        assert torch.equal(uncond[i], out.rows[i][0])


def test_cached_images_are_not_refined_again(backend, reward):
    cache, calls = library.RefineCache(), []
    first = _run(backend, reward, cache, calls, prompts=PROMPTS[:2], seeds=SEEDS[:2])
    again = _run(backend, reward, cache, calls, prompts=PROMPTS[:2] + ["a blue ball"], seeds=SEEDS[:2] + [9])
    assert calls == [2, 1] and len(again.fresh) == 1 and again.fresh[0].seed == 9
    assert again.results[0] is first.results[0] and torch.equal(again.rows[1], first.rows[1])
    dup = _run(backend, reward, cache, calls, prompts=["a red cube", "a red cube"], seeds=[3, 3])
    assert calls == [2, 1] and dup.calls == 0 and dup.results[0] is dup.results[1]  # same image twice: cached


def test_chunks_for_memory_give_the_same_rows(backend, reward):
    calls = []
    out = _run(backend, reward, library.RefineCache(), calls, max_rows=2)
    assert calls == [2, 1]
    whole = _run(backend, reward, library.RefineCache(), [])
    for a, b in zip(out.rows, whole.rows):
        assert float((a - b).norm()) <= 1e-2 * max(float(b.norm()), 1e-8)


def test_interrupt_keeps_the_unrefined_embedding_and_caches_nothing(backend, reward):
    cache, calls, polls = library.RefineCache(), [], []
    out = _run(backend, reward, cache, calls, should_stop=lambda: polls.append(1) or True)
    base = backend.encode_prompts([""]).float()
    assert out.stopped and polls and len(cache) == 0 and not out.fresh
    assert all(r is None for r in out.results) and all(torch.equal(r, base) for r in out.rows)
    assert library.stack_rows(out.rows).shape == (1, 77, backend.context_dim)  # all rows: the base embedding


def _create_infotext(params, all_prompts, all_seeds, index):
    """The part of A1111/Forge's ``processing.create_infotext`` that resolves extra_generation_params."""
    out = dict(params)
    for key, value in out.items():
        if isinstance(value, list):
            out[key] = value[index]
        elif callable(value):
            out[key] = value(p=None, all_prompts=all_prompts, all_seeds=all_seeds, all_subseeds=all_seeds,
                             comments=None, iteration=0, position_in_batch=index, use_main_prompt=False,
                             index=index, all_negative_prompts=None)
    return {k: v for k, v in out.items() if v is not None}


def test_each_image_infotext_tells_its_own_refinement():
    a = ScriptArgs(enabled=True, embedding="e", refine=True, refine_steps=8, patience=2, reward="hpsv2.1")
    refined = {("a cat", 1): "0.1000->0.2000 (step 1)", ("a dog", 2): "0.3000->0.3500 (step 2)"}
    skipped = {("a cow", 3): "interrupted before refinement finished; the unrefined embedding was used"}
    params = {"ReNeg": "e", **refine_infotext(a, refined, skipped)}
    prompts, seeds = ["a cat", "a dog", "a cow"], [1, 2, 3]
    per_image = [_create_infotext(params, prompts, seeds, i) for i in range(3)]
    assert per_image[0][KEY_REFINED] == "0.1000->0.2000 (step 1)" and KEY_REFINE_SKIPPED not in per_image[0]
    assert per_image[1][KEY_REFINED] == "0.3000->0.3500 (step 2)" and per_image[1][KEY_REFINE_STEPS] == "8"
    assert KEY_REFINED not in per_image[2] and KEY_REFINE_STEPS not in per_image[2]
    assert per_image[2][KEY_REFINE_SKIPPED].startswith("interrupted")
    # paste: a refined image turns refinement on, the skipped one does not
    assert args_from_infotext(per_image[1]).refine and not args_from_infotext(per_image[2]).refine
    # the API's info (json.dumps of extra_generation_params) shows strings, every image's result
    api = json.loads(json.dumps(params, default=lambda o: None))
    assert api[KEY_REFINED] == "0.1000->0.2000 (step 1); 0.3000->0.3500 (step 2)" and api[KEY_REFINE_STEPS] == "8"
    # create_infotext gets the prompts with their <lora:...> tags, process_batch saw them removed; a shared seed
    # (variation seeds give every image the main seed) is told apart by the prompt
    tagged = refine_infotext(a, {("a cat ", 7): "A", ("a dog", 7): "B"}, {})[KEY_REFINED]
    assert tagged(all_prompts=["a cat <lora:x:0.8>", "a dog"], all_seeds=[7, 7], index=0) == "A"
    assert tagged(all_prompts=["a cat <lora:x:0.8>", "a dog"], all_seeds=[7, 7], index=1) == "B"
    assert params[KEY_REFINED](all_prompts=["a cat <lora:x:1>"], all_seeds=[1], index=0) == "0.1000->0.2000 (step 1)"
    for clone in (copy.deepcopy(params[KEY_REFINED]), pickle.loads(pickle.dumps(params[KEY_REFINED]))):
        assert clone == params[KEY_REFINED] and clone(all_prompts=prompts, all_seeds=seeds, index=1) == \
            "0.3000->0.3500 (step 2)"


def test_rewards_score_in_fp32_under_the_webuis_autocast():
    raw = build_reward("tiny")
    images = torch.rand(2, 3, 64, 64)
    exact = raw.score(images, ["a cat", "a dog"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = raw.score(images, ["a cat", "a dog"])
        wrapped = fp32_reward(raw).score(images.bfloat16(), ["a cat", "a dog"])
    assert not torch.equal(rounded.float(), exact)  # what an fp16/bf16 context does to an unwrapped reward
    assert wrapped.dtype == torch.float32
    torch.testing.assert_close(wrapped, raw.score(images.bfloat16().float(), ["a cat", "a dog"]))
    assert fp32_reward(fp32_reward(raw)).reward is raw


def test_null_text_start_is_encoded_in_fp32(tmp_path):
    te = write_text_encoder(tmp_path / "te", "tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = LdmBackend(build_ldm("tiny", te), name="tiny-ldm")
    clip = half.sd_model.cond_stage_model
    clip.half()
    weights = {k: v.clone() for k, v in clip.state_dict().items()}
    got = encode_fp32(half, [""])
    assert got.dtype == torch.float32
    # the same weights computing in fp32 (a float copy of the half model) ...
    reference = copy.deepcopy(clip).float()
    with torch.no_grad():
        want = reference.encode([""]).float()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # ... and the model is left exactly as it was (half weights, bit for bit)
    assert all(torch.equal(v, clip.state_dict()[k]) and v.dtype == clip.state_dict()[k].dtype
               for k, v in weights.items())
    with fp32_module(clip):
        assert all(p.dtype == torch.float32 for p in clip.parameters())
    assert all(p.dtype == torch.float16 for p in clip.parameters())


def test_training_starts_from_the_fp32_null_text(backend, tmp_path, monkeypatch):
    seen = []
    original = backend.encode_prompts_fp32

    def recording(prompts):
        seen.append(list(prompts))
        return original(prompts)

    monkeypatch.setattr(backend, "encode_prompts_fp32", recording)
    config = TrainConfig(steps=1, batch_size=1, micro_batch=1, lr=1e-2, num_inference_steps=3, last_k=2, height=64,
                         width=64, seed=0, preview_every=1, save_every=0)
    run_training(backend, build_reward("synthetic"), ["a red cube"], config, tmp_path / "t.safetensors")
    assert seen and all(p == [""] for p in seen)
