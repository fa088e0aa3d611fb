"""Opt-in: the Forge SDXL adapter (``a1111_extension/forge_sdxl_backend.py``) on Forge's REAL SDXL engine class and
backend (``StableDiffusionXL.get_learned_conditioning`` and ``embedder``, ``ClassicTextProcessingEngine``,
``IntegratedUNet2DConditionModel`` in a ``UnetPatcher``/``KModel``, ``IntegratedAutoencoderKL``, and the sampler path
``compile_conditions`` -> ``sampling_function_inner``), tiny parts loaded under ``torch.inference_mode()`` as Forge
loads them. Runs ``tests/forge_sdxl_checks.py`` in Forge's own venv (its transformers 4.x; the pack's venv has
transformers 5, whose CLIP classes Forge's text engine cannot use).

Set ``FORGE_PATH`` and ``FORGE_PYTHON`` (``tests/hosts/setup_hosts.py`` writes both to hosts.env); skipped otherwise.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

FORGE_PATH = os.environ.get("FORGE_PATH")
FORGE_PYTHON = os.environ.get("FORGE_PYTHON")
pytestmark = pytest.mark.skipif(not (FORGE_PATH and FORGE_PYTHON),
                                reason="opt-in: set FORGE_PATH and FORGE_PYTHON to a Forge checkout and its venv")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def facts(tmp_path_factory) -> dict:
    pkg = tmp_path_factory.mktemp("pkg")
    (pkg / "reneg").symlink_to(REPO, target_is_directory=True)  # the checkout as the package 'reneg'
    forge = Path(FORGE_PATH)
    guess = os.environ.get("HUGGINGFACE_GUESS_PATH", str(forge / "repositories" / "huggingface_guess"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(pkg), str(forge), guess, str(forge / "packages_3rdparty")]))
    proc = subprocess.run([FORGE_PYTHON, str(REPO / "tests" / "forge_sdxl_checks.py")], capture_output=True,
                          text=True, cwd=str(forge), env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_forge_sdxl_engine_gets_the_sdxl_backend(facts):
    assert facts["backend_class"] == "ForgeSDXLBackend" and facts["is_forge_sdxl_backend"]
    assert (facts["family"], facts["context_dim"], facts["prediction_type"]) == ("sdxl", 2048, "sample")


def test_size_embedding_is_what_forges_engine_computes(facts):
    """``vector[:, 1280:]`` of Forge's own ``get_learned_conditioning`` (its ``SdConditioning`` width/height, crop
    from Settings) equals the backend's size embedding exactly: square, non-square and a non-zero crop."""
    assert [s["size"] for s in facts["size_embedding"]] == [[64, 64, 0, 0], [64, 96, 0, 0], [1024, 768, 16, 8]]
    for s in facts["size_embedding"]:
        assert s["shape"] == [1, 1536] and s["forge_shape"] == [1, 2816]
        assert s["max_diff"] == 0.0, s


def test_prompts_are_forges_conditioning_packed_and_null_text_is_encoded(facts):
    enc = facts["encode"]
    assert enc["shape"] == [2, 78, 2048] and enc["dtype"] == "torch.float32" and not enc["is_inference"]
    assert enc["max_diff"] == 0.0
    # Forge zeroes an empty *negative* prompt (force_zero_negative_prompt); the null-text start is the encoded ""
    assert facts["forge_empty_negative_abs_sum"] == 0.0
    assert enc["null_abs_sum"] > 0.0
    assert facts["long_prompt_shape"] == [1, 155, 2048]  # two 77-token chunks + the pooled row


def test_model_output_equals_forges_sampler_and_the_applied_uncond(facts):
    """The backend's x0 for a prompt and for a packed negative equals Forge's sampler (``sampling_function_inner``)
    on the webui's cond and on the uncond the on_cfg_denoiser replacement gives it: the file's context and pooled,
    Forge's size embedding kept."""
    s = facts["sampler"]
    assert s["applied"] == 1
    assert s["uncond_context_is_file"] == 0.0 and s["uncond_pooled_is_file"] == 0.0 and s["uncond_size_kept"] == 0.0
    assert s["cond_max_diff"] <= 1e-5 * max(1.0, s["x0_scale"]) and s["uncond_max_diff"] <= 1e-5 * max(1.0, s["x0_scale"])
    assert s["neg_vs_cond_diff"] > 0  # the conditioning matters (the comparison could fail)


def test_gradient_reaches_context_and_pooled_not_padding(facts):
    g = facts["grad"]
    assert g["context"] > 0 and g["pooled"] > 0 and g["padding"] == 0.0
    assert facts["frozen_equal"]
    assert "packed SDXL pair" in facts["unpacked_error"]


def test_refinement_on_forge_sdxl_never_ends_worse_and_keeps_padding(facts):
    r = facts["refine"]
    assert r["shape"] == [1, 78, 2048] and r["best"] >= r["start"] and r["padding_abs"] == 0.0
    assert facts["decode_shape"] == [1, 3, 64, 64]


def test_refiner_is_refused_with_one_message(facts):
    assert "not the SDXL refiner" in facts["refiner_error"]


def test_text_encoding_is_fp32_whatever_the_storage_dtype(facts):
    f = facts["fp16_storage"]
    assert f["dtype"] == "torch.float32" and f["max_diff"] <= 1e-5 * max(1.0, f["scale"]), f
