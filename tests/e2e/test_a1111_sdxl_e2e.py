"""Opt-in end-to-end test of ReNeg on SDXL in a real AUTOMATIC1111 webui (v1.10.x, sgm ``DiffusionEngine``), on CPU.

Same harness as ``test_a1111_e2e.py`` (``A1111_PATH`` / ``A1111_PYTHON``); the checkpoint is the random SDXL-family
one of ``webui_sdxl_checkpoint.py`` (full-size VAE and text encoders, a small KOALA-depth UNet; built once into
``$RENEG_E2E_CACHE``), with its sgm ``.yaml`` beside it. One webui is started with its UI and API; a test-only
extension (``a1111_probe/``, linked as ``extensions/zz-reneg-probe``) records the conditioning the sampler gets.

Checks: (a) an SDXL ReNeg file (a random packed pair saved by core as ``family: sdxl``) makes the negative prompt
irrelevant and changes the image; the uncond the sampler gets is exactly the file's context and pooled embedding
with the webui's own size/crop embedding of this generation kept, which also equals the ReNeg SDXL adapter's size
embedding (non-square size, non-zero crop settings); (b) "Refine for this prompt" runs on SDXL for a batch of two and ends never
worse than its start, row i of the uncond being image i's refined pair; (c) the ReNeg tab trains a few steps on SDXL and writes a valid two-tensor file; (d) an SD1.x file
on the SDXL model is a no-op with "ReNeg not applied" in the infotext. Plus one browser screenshot of the txt2img
page (accordion open, the SDXL file selected, refine ticked, after Generate) in ``outputs/``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_a1111_e2e as a1  # noqa: E402
import webui_sdxl_checkpoint  # noqa: E402

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not a1.A1111_PATH, reason="set A1111_PATH to a stable-diffusion-webui v1.10 checkout")]

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().parent / "a1111_probe"
EMB_XL = "e2e-sdxl-neg"
#: small, and without the SDXL "Approx NN" live preview (its weights would be downloaded)
XL = dict(steps=3, width=64, height=64, override_settings={"live_previews_enable": False})


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    """(client, data dir, probe dir, SDXL file path) of one webui (UI + API) on the SDXL checkpoint."""
    from reneg.core.embedding_io import save_embedding
    from reneg.core.sdxl_backend import pack

    cache = Path(os.environ.get("RENEG_E2E_CACHE") or tmp_path_factory.mktemp("sdxl-ckpt"))
    built = webui_sdxl_checkpoint.ensure(cache)
    data = tmp_path_factory.mktemp("a1111-sdxl")
    ckpt = a1._prepare(data, built)  # links the checkpoint; SD1/SD2 files, extensions/reneg -> this checkout
    ckpt.with_suffix(".yaml").symlink_to(built.with_suffix(".yaml"))  # A1111 reads <ckpt>.yaml beside it
    (data / "extensions" / "zz-reneg-probe").symlink_to(PROBE, target_is_directory=True)
    g = torch.Generator().manual_seed(11)
    path = data / "models" / "ReNeg" / f"{EMB_XL}.safetensors"
    save_embedding(path, pack(torch.randn(1, 77, 2048, generator=g) * 0.5, torch.randn(1, 1280, generator=g)),
                   base_model="random test pair")
    probe = data / "probe"
    os.environ["RENEG_PROBE_DIR"] = str(probe)  # inherited by the webui process
    try:
        with a1._webui(data, ckpt, ui=True) as client:
            yield client, data, probe, path
    finally:
        os.environ.pop("RENEG_PROBE_DIR", None)


def _txt2img(client, reneg_args=None, **kw):
    return client.txt2img(reneg_args, **{**XL, **kw})


def _last_probe(probe: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(probe.glob("*.safetensors"))
    assert files, "the probe recorded no denoiser call"
    return load_file(str(files[-1]))


def test_sdxl_file_replaces_the_uncond_and_keeps_the_webuis_size_embedding(xl):
    from reneg.core.embedding_io import load_embedding

    client, _, probe, path = xl
    emb = load_embedding(path)
    assert emb.family == "sdxl"
    plain, _, _ = _txt2img(client)
    with_neg, info, _ = _txt2img(client, [True, EMB_XL])
    other_negative, _, _ = _txt2img(client, [True, EMB_XL], negative_prompt="lowres, bad hands, watermark")
    assert f"ReNeg: {EMB_XL}" in info and "ReNeg not applied" not in info, info
    assert a1._maxdiff(with_neg, other_negative) == 0  # the negative prompt no longer matters
    assert a1._maxdiff(with_neg, plain) > 0

    # non-square and with crop settings: the webui's size embedding is kept and equals the adapter's
    settings = {**XL["override_settings"], "sdxl_crop_top": 16, "sdxl_crop_left": 8}
    _txt2img(client, [True, EMB_XL], width=96, height=64, override_settings=settings)
    rec = _last_probe(probe)
    cross, vector = rec["uncond_crossattn"], rec["uncond_vector"]
    assert cross.shape == (1, 77, 2048) and vector.shape == (1, 2816)
    torch.testing.assert_close(cross, emb.context, rtol=0, atol=0)
    torch.testing.assert_close(vector[:, :1280], emb.pooled, rtol=0, atol=0)
    webui_size = rec["cond_vector"][:, 1280:]  # what get_learned_conditioning computed for this generation
    torch.testing.assert_close(vector[:, 1280:], webui_size, rtol=0, atol=0)
    torch.testing.assert_close(rec["adapter_size"], webui_size, rtol=0, atol=0)
    # crop 0 again, no ReNeg, empty negative prompt. (Set explicitly: A1111 restores an overridden setting only if
    # it was ever saved, so the crop above would otherwise stay for the rest of the session.)
    zero_crop = {**XL["override_settings"], "sdxl_crop_top": 0, "sdxl_crop_left": 0}
    _txt2img(client, None, width=96, height=64, negative_prompt="", override_settings=zero_crop)
    rec0 = _last_probe(probe)
    assert (rec0["cond_vector"][:, 1280:] - webui_size).abs().max() > 0
    torch.testing.assert_close(rec0["adapter_size"], rec0["cond_vector"][:, 1280:], rtol=0, atol=0)
    # A1111 samples an empty negative prompt on SDXL with zeros (force_zero_embeddings); ReNeg's null start differs
    assert (rec0["uncond_crossattn"] == 0).all() and (rec0["uncond_vector"][:, :1280] == 0).all()


def test_refine_for_this_prompt_on_sdxl(xl):
    """A batch of two: each image refined for its own seed, row i of the uncond its own refined pair, the webui's
    size embedding kept in both rows."""
    from reneg.core.embedding_io import load_embedding

    client, _, probe, path = xl
    out = client.post("/sdapi/v1/txt2img", {**a1.BASE, **XL, "batch_size": 2, "alwayson_scripts": {
        "reneg": {"args": [True, EMB_XL, 1.0, True, 2, 2, "synthetic"]}}})
    infos = json.loads(out["info"])["infotexts"]
    assert len(infos) == 2
    bests = []
    for info in infos:
        assert "ReNeg refine skipped" not in info and "ReNeg refine steps: 2" in info, info
        value = info.split("ReNeg refined: ")[1].split(",")[0]
        start, best = (float(v) for v in value.split(" (")[0].split("->"))
        assert best >= start
        bests.append(best > start)
    rec = _last_probe(probe)
    cross, vector = rec["uncond_crossattn"], rec["uncond_vector"]
    assert cross.shape == (2, 77, 2048) and vector.shape == (2, 2816)
    torch.testing.assert_close(vector[:, 1280:], rec["cond_vector"][:, 1280:], rtol=0, atol=0)
    file_context = load_embedding(path).context
    for row, improved in enumerate(bests):
        if improved:  # a better iterate was found: the sampler got it, not the file's pair
            assert (cross[row] - file_context[0]).abs().max() > 0
    if all(bests):
        assert (cross[0] - cross[1]).abs().max() > 0  # two seeds, two refined negatives


def test_refine_a_prompt_over_75_tokens_on_sdxl(xl):
    """The webui's 2-chunk SDXL cond ([1, 154, 2048], pooled from the first chunk) refines; the 77-token negative is
    applied next to it."""
    client, _, probe, _ = xl
    long_prompt = ", ".join(["a very detailed photo of a small cat"] * 12)  # > 75 tokens: 2 chunks
    _, info, _ = _txt2img(client, [True, EMB_XL, 1.0, True, 1, 1, "synthetic"], prompt=long_prompt)
    assert "ReNeg refined: " in info and "ReNeg refine skipped" not in info, info
    rec = _last_probe(probe)
    assert rec["cond_crossattn"].shape == (1, 154, 2048) and rec["uncond_crossattn"].shape == (1, 77, 2048)


def test_tab_trains_on_sdxl_and_writes_a_two_tensor_file(xl):
    from safetensors import safe_open

    from reneg.core.embedding_io import load_embedding

    client, data, _, _ = xl
    _, _, _, fn_index = a1._ui_ids(client, data)
    assert fn_index is not None
    args = a1._train_args("task(reneg-e2e-xl-train)", "tab-xl", 2)
    (gallery, html), seen = a1._run_tab(client, fn_index, args)
    assert "complete: 2/2 steps" in html, html
    assert len(gallery) == 3  # before, after, reward curve
    assert any("ReNeg training: step" in (r.get("textinfo") or "") for r in seen)
    out = data / "models" / "ReNeg" / "tab-xl.safetensors"
    emb = load_embedding(out)
    assert emb.metadata["family"] == "sdxl" and emb.metadata["status"] == "complete"
    assert emb.context.shape == (1, 77, 2048) and emb.pooled.shape == (1, 1280)
    assert torch.isfinite(emb.tensor).all()
    with safe_open(str(out), "pt") as fh:
        assert sorted(fh.keys()) == ["reneg_negative", "reneg_negative_pooled"]
    # a wrong-family start is the tab's one error message
    bad = a1._train_args("task(reneg-e2e-xl-bad)", "tab-xl-bad", 1, start=a1.EMB)
    (_, bad_html), _ = a1._run_tab(client, fn_index, bad)
    assert "ReNeg training failed" in bad_html and "768-wide" in bad_html, bad_html


def test_sd1_file_on_sdxl_is_a_noop_with_the_reason(xl):
    client, _, _, _ = xl
    plain, _, _ = _txt2img(client)
    wrong, info, _ = _txt2img(client, [True, a1.EMB])
    assert a1._maxdiff(plain, wrong) == 0
    assert f"ReNeg: {a1.EMB}" not in info and "ReNeg not applied" in info and "768-wide" in info, info


def test_browser_txt2img_with_sdxl_file_and_refine(xl):
    """Screenshot for a person to look at: accordion open, the SDXL file selected, refine ticked, after Generate."""
    import test_a1111_browser as br

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    client, _, _, _ = xl
    client.post("/sdapi/v1/options", {"live_previews_enable": False})
    out = REPO / "outputs"
    out.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=br.CHROMIUM, args=br.CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
            page.goto(client.url + "/", wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_selector("#txt2img_generate", timeout=180_000)
            page.wait_for_selector("#script_txt2img_reneg_enable", state="attached", timeout=60_000)
            page.locator("#txt2img_prompt textarea").fill(a1.PROMPT)
            br.set_number(page, "txt2img_steps", 3)
            br.set_number(page, "txt2img_width", 64)
            br.set_number(page, "txt2img_height", 64)
            br.open_reneg_accordion(page)
            br.pick(page, "script_txt2img_reneg_embedding", EMB_XL)
            page.locator("#script_txt2img_reneg_refine input").check()
            br.set_number(page, "script_txt2img_reneg_refine_steps", 2)
            br.pick(page, "script_txt2img_reneg_reward", "synthetic", exact_option=False)
            page.locator("#txt2img_generate").click()
            page.wait_for_function("() => { const e = document.querySelector('#html_info_txt2img');"
                                   " return e && e.innerText.includes('Steps:'); }", timeout=600_000)
            info = br.inner_html(page, "html_info_txt2img")
            page.screenshot(path=str(out / "a1111-sdxl-txt2img-refined.png"), full_page=True)
        finally:
            browser.close()
    assert f"ReNeg: {EMB_XL}" in info and "ReNeg refined: " in info, info
    assert "ReNeg not applied" not in info and "ReNeg refine skipped" not in info, info
