"""End-to-end on a live Forge webui (lllyasviel/stable-diffusion-webui-forge dfdcbab6), on CPU, fully offline.

The checks are test_a1111_e2e.py's, imported from it and run here against Forge: the script is registered with
its documented API arguments; the embedding replaces the uncond at every step of every pass (first pass, hires
fix, img2img, batch 2, DDIM and k-diffusion samplers) and nothing leaks into later generations; strength,
infotext and png-info round-trip; a wrong-family embedding is a no-op; per-prompt refinement runs and never ends
worse than its start; the UI builds the accordion, the ReNeg tab and its settings.

Environment: ``FORGE_PATH`` (a Forge checkout whose ``repositories/`` holds huggingface_guess, BLIP and the webui
assets, as Forge's own launch would clone them) and ``FORGE_PYTHON`` (Forge's venv with this pack's requirements);
``tests/hosts/setup_hosts.py`` builds both. ``RENEG_E2E_CACHE`` keeps the ~470 MB checkpoint between runs.
Forge is started like A1111 (``launch.py --skip-prepare-environment --skip-install ...``) plus ``--always-cpu``
(Forge's own device flag); the checkpoint is ``forge_checkpoint.py``'s (Forge builds the VAE and text encoder
from its shipped SD1.5 configs, so only the UNet can be small).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import forge_checkpoint
import test_a1111_e2e as a1
from test_a1111_e2e import (  # noqa: F401  (collected here: the same checks, run against Forge)
    test_embedding_replaces_uncond_and_leaves_other_generations_alone, test_every_pass_and_sampler_is_replaced,
    test_refine_for_this_prompt, test_script_is_registered_with_documented_args,
    test_strength_infotext_and_png_info_roundtrip, test_tab_interrupt_keeps_valid_file_and_resume_finishes,
    test_tab_settings_and_accordion_are_built, test_tab_trains_with_live_progress,
    test_wrong_family_embedding_is_a_noop)
# Not run here: test_webui_ddim_equals_core_engine (built for A1111's tiny ldm checkpoint). The tab's training
# runs first thing after start-up here (ui_server is a fresh webui), before any generation: Forge loads its
# checkpoint lazily and the tab must load it itself (a1111_extension/runtime.py: loaded_sd_model).

FORGE_PATH = os.environ.get("FORGE_PATH")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    not FORGE_PATH, reason="set FORGE_PATH (and FORGE_PYTHON) to a Forge webui; tests/hosts/setup_hosts.py builds one")]

FORGE = a1.Host("Forge", FORGE_PATH, os.environ.get("FORGE_PYTHON", sys.executable),
                required=("launch.py", "backend/huggingface/runwayml/stable-diffusion-v1-5",
                          "repositories/huggingface_guess/huggingface_guess/detection.py"),
                # Forge's gradio 4 serves files only under --gradio-allowed-path, whose default is the data dir: with
                # the test's --data-dir its own javascript/ would answer 403 (and so would this pack, symlinked in
                # from the checkout), and the page would never set up its accordions.
                flags=("--always-cpu", "--gradio-allowed-path", str(FORGE_PATH),
                       "--gradio-allowed-path", str(a1.REPO)))


class ForgeClient(a1.Webui):
    """Forge's txt2img API fails with hires fix (HTTP 500: ``'Use same choices' in None``, processing.py) unless
    ``hr_additional_modules`` is given; send what Forge's own UI sends."""

    def post(self, path: str, payload: dict):
        if payload.get("enable_hr") and "hr_additional_modules" not in payload:
            payload = {**payload, "hr_additional_modules": ["Use same choices"]}
        return super().post(path, payload)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cache = Path(os.environ.get("RENEG_E2E_CACHE") or tmp_path_factory.mktemp("forge-ckpt"))
    return forge_checkpoint.ensure(cache)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, checkpoint):
    data = tmp_path_factory.mktemp("forge-api")
    ckpt = a1._prepare(data, checkpoint)
    with a1._webui(data, ckpt, ui=False, host=FORGE) as client:
        yield ForgeClient(client.url), data, ckpt


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory, checkpoint):
    data = tmp_path_factory.mktemp("forge-ui")
    ckpt = a1._prepare(data, checkpoint)
    with a1._webui(data, ckpt, ui=True, host=FORGE) as client:
        yield a1._ui_ids(ForgeClient(client.url), data)
