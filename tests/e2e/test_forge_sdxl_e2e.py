"""End-to-end on a live Forge webui with an SDXL-family checkpoint, on CPU, fully offline.

The checkpoint is ``webui_sdxl_checkpoint.py``'s (a random KOALA-depth UNet that Forge's ``huggingface_guess``
detects as ``KOALA_700M``, an SDXL subclass, so ``backend/loader.py`` builds its ``StableDiffusionXL`` engine; the
VAE and both text encoders are full size). One webui (with its UI and the API) serves every check, started once:

* an SDXL ReNeg file (a random packed pair saved through ``core/embedding_io``) applied over the API makes the
  negative prompt irrelevant and changes the image; a probe extension (written here into the webui's data dir)
  records what Forge's sampler hands the UNet (``model_function_wrapper``: ``c_crossattn`` and ``y`` of the uncond
  rows), which is the file's context, the file's pooled embedding and Forge's own size embedding for 64x64;
* "Refine for this prompt" runs on SDXL and never ends worse than its start;
* the ReNeg tab trains a few steps on SDXL as the first job after start-up (Forge loads checkpoints lazily) and
  writes a two-tensor SDXL file;
* an SD1.x file on the SDXL model is a no-op with its message;
* a browser screenshot of txt2img with the accordion open and the SDXL file selected, after Generate
  (``outputs/forge-sdxl-txt2img-generated.png``).

Environment as for ``test_forge_e2e.py`` (``FORGE_PATH``, ``FORGE_PYTHON``, ``RENEG_E2E_CACHE``); building the
checkpoint the first time needs ``A1111_PATH``/``A1111_PYTHON`` (sgm classes). Forge's default "Approx NN" live
preview would try to download ``vaeapprox-sdxl.pt`` for SDXL: the data dir's settings choose "Approx cheap".
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import test_a1111_e2e as a1
import test_forge_e2e as fe
import webui_sdxl_checkpoint as xl

FORGE_PATH = os.environ.get("FORGE_PATH")
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    not FORGE_PATH, reason="set FORGE_PATH (and FORGE_PYTHON) to a Forge webui; tests/hosts/setup_hosts.py builds one")]

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = REPO / "outputs"
EMB_XL = "e2e-sdxl-neg"
SIZE = 64

PROBE = r'''
"""Test probe (written by test_forge_sdxl_e2e.py): records what Forge's sampler gives the UNet at the first step."""
from pathlib import Path

import torch
from modules import scripts

OUT = Path(__file__).resolve().parents[1] / "captured.pt"


class RenegSdxlProbe(scripts.Script):
    def title(self):
        return "ReNeg e2e probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process_before_every_sampling(self, p, *args, **kwargs):
        calls = []
        unet = p.sd_model.forge_objects.unet.clone()

        def wrapper(apply_model, a):
            c = a["c"]
            if not calls or torch.equal(calls[0]["timestep"], a["timestep"]):  # every call of the first step
                calls.append({"flags": torch.tensor(a["cond_or_uncond"]), "timestep": a["timestep"].clone(),
                              "crossattn": c["c_crossattn"].detach().float().clone(),
                              "y": c["y"].detach().float().clone()})
                torch.save(calls, str(OUT))
            return apply_model(a["input"], a["timestep"], **c)

        unet.set_model_unet_function_wrapper(wrapper)
        p.sd_model.forge_objects.unet = unet
'''


def _uncond_rows(calls: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crossattn, y) of the uncond rows and y of the cond rows from the probe's first-step calls."""
    un_c, un_y, co_y = [], [], []
    for call in calls:
        chunks = len(call["flags"])
        for flag, cross, y in zip(call["flags"].tolist(), call["crossattn"].chunk(chunks), call["y"].chunk(chunks)):
            (un_c.append(cross), un_y.append(y)) if flag == 1 else co_y.append(y)
    return torch.cat(un_c), torch.cat(un_y), torch.cat(co_y)


def _size_embedding(height: int, width: int) -> torch.Tensor:
    """SDXL's size/crop embedding of (h, w, 0, 0, h, w): 256 sinusoidal features per value, cos first (Forge's
    ``Timestep(256)``, diffusers' ``add_time_proj``)."""
    from diffusers.models.embeddings import get_timestep_embedding

    size = torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32)
    return get_timestep_embedding(size, 256, flip_sin_to_cos=True, downscale_freq_shift=0).reshape(1, -1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from reneg.core.embedding_io import save_embedding
    from reneg.core.sdxl_backend import pack

    cache = Path(os.environ.get("RENEG_E2E_CACHE") or tmp_path_factory.mktemp("sdxl-ckpt"))
    checkpoint = xl.ensure(cache)
    data = tmp_path_factory.mktemp("forge-sdxl")
    ckpt = a1._prepare(data, checkpoint)  # extensions/reneg -> this checkout; an SD1 and an SD2 file
    g = torch.Generator().manual_seed(11)
    negative = pack(torch.randn(1, 77, 2048, generator=g) * 0.5, torch.randn(1, 1280, generator=g) * 0.5)
    save_embedding(data / "models" / "ReNeg" / f"{EMB_XL}.safetensors", negative)
    probe = data / "extensions" / "reneg-probe" / "scripts"
    probe.mkdir(parents=True)
    (probe / "reneg_probe.py").write_text(PROBE, encoding="utf-8")
    (data / "config.json").write_text(json.dumps({"show_progress_type": "Approx cheap"}), encoding="utf-8")
    with a1._webui(data, ckpt, ui=True, host=fe.FORGE) as client:
        yield a1._ui_ids(fe.ForgeClient(client.url), data)


def _txt2img(client, reneg_args=None, **kw):
    return client.txt2img(reneg_args, **{"width": SIZE, "height": SIZE, **kw})


def _captured(data: Path) -> list:
    return torch.load(str(data / "extensions" / "reneg-probe" / "captured.pt"), weights_only=True)


def test_tab_trains_on_sdxl_first_thing_after_startup(server):
    """Forge has not loaded the checkpoint yet (FakeInitialModel): the tab loads it and trains on SDXL."""
    from reneg.core.embedding_io import load_embedding

    client, data, _, fn_index = server
    assert fn_index is not None
    (gallery, html), seen = a1._run_tab(client, fn_index, a1._train_args("task(reneg-xl-train)", "xl-tab", 2))
    assert "complete: 2/2 steps" in html, html
    assert len(gallery) == 3  # before, after, reward curve
    assert any("ReNeg training: step" in (r.get("textinfo") or "") for r in seen)
    emb = load_embedding(data / "models" / "ReNeg" / "xl-tab.safetensors")
    assert emb.metadata["status"] == "complete" and emb.metadata.get("family") == "sdxl", emb.metadata
    assert emb.tensor.shape == (1, 78, 2048) and emb.pooled.shape == (1, 1280)
    assert torch.isfinite(emb.tensor).all() and float(emb.tensor[:, 77, 1280:].abs().sum()) == 0.0


def test_sdxl_file_replaces_the_uncond_and_keeps_forges_size_embedding(server):
    from reneg.core.embedding_io import load_embedding

    client, data, _, _ = server
    plain, info_plain, _ = _txt2img(client)
    plain_c, plain_y, plain_cond_y = _uncond_rows(_captured(data))
    with_neg, info, _ = _txt2img(client, [True, EMB_XL])
    un_c, un_y, co_y = _uncond_rows(_captured(data))
    other_negative, _, _ = _txt2img(client, [True, EMB_XL], negative_prompt="lowres, bad hands, watermark")
    after, info_after, _ = _txt2img(client)
    assert f"ReNeg: {EMB_XL}" in info and "ReNeg not applied" not in info, info
    assert a1._maxdiff(with_neg, other_negative) == 0  # the negative prompt no longer matters
    assert a1._maxdiff(with_neg, plain) > 0
    assert a1._maxdiff(plain, after) == 0 and "ReNeg" not in info_after  # nothing leaks into later generations

    emb = load_embedding(data / "models" / "ReNeg" / f"{EMB_XL}.safetensors")
    assert un_c.shape == (1, 77, 2048) and un_y.shape == (1, 2816)
    torch.testing.assert_close(un_c, emb.context, rtol=0, atol=1e-6)  # the file's context ...
    torch.testing.assert_close(un_y[:, :1280], emb.pooled, rtol=0, atol=1e-6)  # ... and its pooled embedding
    assert float((plain_c - un_c).abs().max()) > 0.1 and float((plain_y[:, :1280] - un_y[:, :1280]).abs().max()) > 0.1
    # Forge's size embedding for this generation is kept: the plain run's, the cond's, and SDXL's (64, 64, 0, 0,
    # 64, 64) sinusoidal embedding (256 per value, cos first, as Forge's Timestep / diffusers' add_time_proj)
    expected = _size_embedding(SIZE, SIZE)
    torch.testing.assert_close(un_y[:, 1280:], plain_y[:, 1280:], rtol=0, atol=0)
    torch.testing.assert_close(un_y[:, 1280:], co_y[:, 1280:], rtol=0, atol=0)
    torch.testing.assert_close(un_y[:, 1280:], expected, rtol=0, atol=1e-5)
    assert float((plain_cond_y[:, 1280:] - expected).abs().max()) <= 1e-5


def test_strength_and_hires_pass_on_sdxl(server):
    """Strength 0.5 blends context and pooled with the negative prompt's; in the hires pass the uncond is the file's
    pair with the size embedding Forge computed for that pass kept."""
    from reneg.core.embedding_io import load_embedding

    client, data, _, _ = server
    emb = load_embedding(data / "models" / "ReNeg" / f"{EMB_XL}.safetensors")
    _txt2img(client)
    plain_c, plain_y, _ = _uncond_rows(_captured(data))
    _, info, _ = _txt2img(client, [True, EMB_XL, 0.5])
    un_c, un_y, _ = _uncond_rows(_captured(data))
    assert "ReNeg strength: 0.5" in info
    torch.testing.assert_close(un_c, 0.5 * plain_c + 0.5 * emb.context, rtol=0, atol=1e-5)
    torch.testing.assert_close(un_y[:, :1280], 0.5 * plain_y[:, :1280] + 0.5 * emb.pooled, rtol=0, atol=1e-5)
    assert torch.equal(un_y[:, 1280:], plain_y[:, 1280:])
    hires = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.6, hr_second_pass_steps=2)
    a, _, _ = _txt2img(client, [True, EMB_XL], **hires)
    un_c, un_y, co_y = _uncond_rows(_captured(data))  # the probe re-wraps for every pass: this is the hires pass
    b, _, _ = _txt2img(client, [True, EMB_XL], negative_prompt="ugly, lowres", **hires)
    assert a[0].shape == (2 * SIZE, 2 * SIZE, 3) and a1._maxdiff(a, b) == 0
    torch.testing.assert_close(un_c, emb.context, rtol=0, atol=1e-6)
    torch.testing.assert_close(un_y[:, :1280], emb.pooled, rtol=0, atol=1e-6)
    assert torch.equal(un_y[:, 1280:], co_y[:, 1280:])  # kept: what Forge gives the cond in this pass
    # ... which is the FIRST pass's 64x64 embedding, not 128x128: Forge's cond cache key (processing.py
    # cached_params) has the first-pass width/height, not the SdConditioning's hires size, so the hires pass reuses
    # the first pass's SDXL conds when the prompts are the same (the webui's behaviour; ReNeg keeps it)
    torch.testing.assert_close(un_y[:, 1280:], _size_embedding(SIZE, SIZE), rtol=0, atol=1e-5)


def _refined_reward(info: str) -> tuple[float, float]:
    value = info.split("ReNeg refined: ")[1].split(",")[0]
    start, best = (float(v) for v in value.split(" (")[0].split("->"))
    return start, best


def test_refine_for_this_prompt_on_sdxl(server):
    client, data, _, _ = server
    refined, info, _ = _txt2img(client, [True, EMB_XL, 1.0, True, 2, 2, "synthetic"])
    assert "ReNeg refine skipped" not in info, info
    assert "ReNeg refine steps: 2" in info and "ReNeg reward: synthetic" in info, info
    start, best = _refined_reward(info)
    assert best >= start
    un_c, un_y, co_y = _uncond_rows(_captured(data))
    assert un_c.shape == (1, 77, 2048) and un_y.shape == (1, 2816)
    assert torch.equal(un_y[:, 1280:], co_y[:, 1280:])  # Forge's size embedding kept
    if best > start:  # a better iterate was found: the sampler gets it, not the file's pair
        from reneg.core.embedding_io import load_embedding

        emb = load_embedding(data / "models" / "ReNeg" / f"{EMB_XL}.safetensors")
        assert float((un_c - emb.context).abs().max()) > 0 or float((un_y[:, :1280] - emb.pooled).abs().max()) > 0
        plain_emb, _, _ = _txt2img(client, [True, EMB_XL])
        assert a1._maxdiff(refined, plain_emb) > 0


def test_refine_with_save_refined_writes_the_sdxl_pair_the_sampler_gets(server):
    from reneg.core.embedding_io import load_embedding

    client, data, _, _ = server
    client.post("/sdapi/v1/options", {"reneg_save_refined": True})
    try:
        _, info, _ = _txt2img(client, [True, EMB_XL, 1.0, True, 2, 2, "synthetic"], seed=321)
    finally:
        client.post("/sdapi/v1/options", {"reneg_save_refined": False})
    assert "ReNeg refined: " in info, info
    un_c, un_y, co_y = _uncond_rows(_captured(data))
    saved = sorted((data / "models" / "ReNeg" / "refined").glob("*.safetensors"))
    assert len(saved) == 1, saved
    refined = load_embedding(saved[0])
    assert refined.metadata.get("family") == "sdxl" and refined.tensor.shape == (1, 78, 2048)
    torch.testing.assert_close(un_c, refined.context, rtol=0, atol=1e-6)  # the saved pair is what the sampler got
    torch.testing.assert_close(un_y[:, :1280], refined.pooled, rtol=0, atol=1e-6)
    assert torch.equal(un_y[:, 1280:], co_y[:, 1280:])


def test_sd1_file_on_sdxl_is_a_noop_with_its_message(server):
    client, _, _, _ = server
    plain, _, _ = _txt2img(client)
    wrong, info, _ = _txt2img(client, [True, a1.EMB])
    assert a1._maxdiff(plain, wrong) == 0
    assert f"ReNeg: {a1.EMB}" not in info
    assert "ReNeg not applied" in info and "2048" in info, info


def test_browser_txt2img_with_the_sdxl_file(server):
    """What a user sees: the accordion open, the SDXL file chosen, Generate -> the image and the ReNeg infotext."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    import test_a1111_browser as br

    client, _, _, _ = server
    if not Path(br.CHROMIUM).is_file():
        pytest.fail(f"no chromium at {br.CHROMIUM} (apt-get install chromium, or set RENEG_CHROMIUM)")
    OUTPUTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=br.CHROMIUM, args=br.CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            errors = []
            page.on("pageerror", lambda e: "reneg" in (e.stack or "").lower() and errors.append(str(e)))
            page.goto(client.url + "/", wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_selector("#txt2img_generate", timeout=180_000)
            page.wait_for_selector("#script_txt2img_reneg_enable", state="attached", timeout=60_000)
            page.locator("#txt2img_prompt textarea").fill(a1.PROMPT)
            br.set_number(page, "txt2img_steps", 4)
            br.set_number(page, "txt2img_width", SIZE)
            br.set_number(page, "txt2img_height", SIZE)
            br.open_reneg_accordion(page)
            br.pick(page, "script_txt2img_reneg_embedding", EMB_XL)
            page.locator("#txt2img_generate").click()
            page.wait_for_function("() => { const e = document.querySelector('#html_info_txt2img');"
                                   " return e && e.innerText.includes('Steps:'); }", timeout=300_000)
            info = br.inner_html(page, "html_info_txt2img")
            page.locator("#txt2img_interrupt").wait_for(state="hidden", timeout=60_000)  # the job has finished
            page.screenshot(path=str(OUTPUTS / "forge-sdxl-txt2img-generated.png"), full_page=True)
            assert page.locator("#txt2img_gallery img").count() >= 1
            assert f"ReNeg: {EMB_XL}" in info and "ReNeg not applied" not in info, info
            assert not errors, errors
        finally:
            browser.close()
