"""Real-browser tests of the ReNeg accordion, tab and API in a running webui (A1111 v1.10, and Forge when set).

The webui is started with its UI (not ``--nowebui``) on a tiny random SD1-shaped checkpoint, the released
``sd1.5_reneg_emb.bin`` in ``models/ReNeg/`` and the pack in ``extensions/reneg``; headless Chromium (Debian's,
``$RENEG_CHROMIUM``, default ``/usr/bin/chromium``) is driven through PyPI ``playwright`` like a user would:
open the accordion, pick the file, press Generate, read the infotext; train a few steps in the ReNeg tab and
watch its progress and completion message; make runs fail and read their errors in the tab.

Environment (nothing else): ``A1111_PATH``/``A1111_PYTHON`` for A1111, ``FORGE_PATH``/``FORGE_PYTHON`` for Forge
(each flavour is skipped only when its ``*_PATH`` is unset). Screenshots go to ``test-artifacts/browser/``
(gitignored) in the repository, or to ``$RENEG_ARTIFACTS`` when set.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import torch

import forge_checkpoint
import test_a1111_e2e as a1
import test_forge_e2e as fe

REPO = Path(__file__).resolve().parents[2]
RELEASED = Path(os.environ.get("RENEG_RELEASED_DIR", REPO.parent / "shared" / "fixtures" / "released"))
ARTIFACTS = Path(os.environ.get("RENEG_ARTIFACTS", REPO / "test-artifacts")) / "browser"
CHROMIUM = os.environ.get("RENEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
RELEASED_NAME = "sd1.5_reneg_emb"
WRONG_FAMILY = "sd2.1_reneg_emb"
BROKEN = "broken-download"
PROMPT = "a photo of a cat"

#: flavour -> (its *_PATH env var, the host to launch, API client class). A1111 runs the tiny ldm checkpoint;
#: Forge the checkpoint it can load offline (tests/e2e/forge_checkpoint.py: tiny UNet, Forge's SD1.5 VAE/CLIP).
FLAVOURS = {
    "a1111": ("A1111_PATH", a1.A1111, a1.Webui),
    "forge": ("FORGE_PATH", fe.FORGE, fe.ForgeClient),
}

pytestmark = [pytest.mark.e2e]


def txt2img(api, reneg_args=None, **kw):
    """``/sdapi/v1/txt2img`` at this module's small settings: (base64 images, info dict)."""
    payload = dict(prompt=PROMPT, steps=4, cfg_scale=5, width=64, height=64, seed=7, sampler_name="DDIM", **kw)
    if reneg_args is not None:
        payload["alwayson_scripts"] = {"reneg": {"args": reneg_args}}
    out = api.post("/sdapi/v1/txt2img", payload)
    return out["images"], json.loads(out["info"])


def _prepare(flavour: str, data: Path, tmp_path_factory) -> Path:
    """a1._prepare's webui data folder, plus the released sd1.5/sd2.1 files and a random-bytes .bin."""
    checkpoint = None
    if flavour == "forge":
        cache = Path(os.environ.get("RENEG_E2E_CACHE") or tmp_path_factory.mktemp("forge-ckpt"))
        checkpoint = forge_checkpoint.ensure(cache)
    ckpt = a1._prepare(data, checkpoint)
    models = data / "models" / "ReNeg"
    for name in (RELEASED_NAME, WRONG_FAMILY):
        shutil.copyfile(RELEASED / f"{name}.bin", models / f"{name}.bin")
    (models / f"{BROKEN}.bin").write_bytes(os.urandom(4096))  # e.g. an HTML error page saved as .bin
    return ckpt


@pytest.fixture(scope="module", params=sorted(FLAVOURS))
def webui(request, tmp_path_factory):
    flavour = request.param
    path_env, host, client_class = FLAVOURS[flavour]
    if not os.environ.get(path_env):
        pytest.skip(f"set {path_env} to run the browser tests against {flavour}")
    if not (RELEASED / f"{RELEASED_NAME}.bin").is_file():
        pytest.fail(f"released embeddings not found at {RELEASED} (set RENEG_RELEASED_DIR)")
    data = tmp_path_factory.mktemp(f"{flavour}-browser")
    ckpt = _prepare(flavour, data, tmp_path_factory)
    with a1._webui(data, ckpt, ui=True, host=host) as client:
        yield flavour, client_class(client.url), data


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no chromium at {CHROMIUM} (apt-get install chromium, or set RENEG_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture()
def page(webui, browser, request):
    flavour, api, _ = webui
    ctx = browser.new_context(viewport={"width": 1400, "height": 1100})
    pg = ctx.new_page()
    pg.errors = []  # uncaught errors raised in ReNeg's own script (the webui's own are not ours to judge)
    pg.on("pageerror", lambda e: "reneg" in (e.stack or "").lower() and pg.errors.append(str(e)))
    refused = []  # the webui's or this pack's files it would not serve (e.g. gradio 4's 403 outside allowed paths)
    pg.on("response", lambda r: r.status >= 400 and "/file=" in r.url and refused.append(f"{r.status} {r.url}"))
    pg.goto(api.url + "/", wait_until="domcontentloaded", timeout=120_000)
    pg.wait_for_selector("#txt2img_generate", timeout=180_000)
    pg.wait_for_selector("#script_txt2img_reneg_enable", state="attached", timeout=60_000)
    assert not refused, refused[:5]
    yield pg
    ctx.close()


def shot(page, flavour: str, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{flavour}-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# ------------------------------------------------------------------------------------------------- helpers
def pick(page, elem_id: str, value: str, exact_option: bool = True) -> None:
    """Choose ``value`` in a gradio dropdown (an option when listed, else typed as a custom value)."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    option = page.locator(f"#{elem_id} ul.options li", has_text=value)
    if exact_option and option.count():
        option.first.click()
    else:
        box.fill(value)
        box.press("Enter")
    page.locator("body").click(position={"x": 5, "y": 5})  # blur: gradio commits a typed value on blur
    assert page.locator(f"#{elem_id} input").first.input_value() == value


def options(page, elem_id: str) -> list[str]:
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill("")
    items = page.locator(f"#{elem_id} ul.options li").all_inner_texts()
    page.locator("body").click(position={"x": 5, "y": 5})
    return [i.replace("✓", "").strip() for i in items]  # the selected option carries a check mark


def set_number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def open_reneg_accordion(page, tab: str = "txt2img") -> None:
    """Open the accordion by its header, as a user does (that also ticks its enable checkbox)."""
    acc = page.locator(f"#script_{tab}_reneg_enable")
    acc.scroll_into_view_if_needed()
    header = acc.locator(".label-wrap").first
    if "open" not in (header.get_attribute("class") or ""):
        header.click()
    page.locator(f"#script_{tab}_reneg_embedding").wait_for(state="visible", timeout=20_000)
    assert page.locator(f"#script_{tab}_reneg_enable-visible-checkbox").is_checked()


def open_tab(page, title: str) -> None:
    page.locator("#tabs > .tab-nav > button", has_text=re.compile(rf"^\s*{re.escape(title)}\s*$")).click()


def inner_html(page, elem_id: str) -> str:
    return page.evaluate("id => { const all = document.querySelectorAll('#' + id);"
                         " return all.length ? all[all.length - 1].innerText : null; }", elem_id) or ""


# ------------------------------------------------------------------------------------------------ txt2img
def test_txt2img_generate_with_released_file_writes_reneg_infotext(webui, page):
    flavour = webui[0]
    page.locator("#txt2img_prompt textarea").fill(PROMPT)
    set_number(page, "txt2img_steps", 4)
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    open_reneg_accordion(page)
    shown = options(page, "script_txt2img_reneg_embedding")
    assert RELEASED_NAME in shown and BROKEN not in shown, shown
    pick(page, "script_txt2img_reneg_embedding", RELEASED_NAME)
    shot(page, flavour, "txt2img-accordion")
    page.locator("#txt2img_generate").click()
    page.wait_for_function("() => { const e = document.querySelector('#html_info_txt2img');"
                           " return e && e.innerText.includes('Steps:'); }", timeout=300_000)
    info = inner_html(page, "html_info_txt2img")
    assert page.locator("#txt2img_gallery img").count() >= 1
    shot(page, flavour, "txt2img-generated")
    assert f"ReNeg: {RELEASED_NAME}" in info and "ReNeg hash: " in info, info
    assert "ReNeg not applied" not in info and not page.errors, (info, page.errors)


def test_broken_file_is_not_offered_and_the_loader_reason_is_shown(webui, page):
    from reneg.core.embedding_io import load_embedding
    from reneg.core.errors import RenegError

    flavour, _, data = webui
    open_reneg_accordion(page)
    note = page.locator("#script_txt2img_reneg_bad_files").last
    note.wait_for(state="visible", timeout=20_000)
    shot(page, flavour, "txt2img-broken-file-note")
    with pytest.raises(RenegError) as raised:
        load_embedding(data / "models" / "ReNeg" / f"{BROKEN}.bin")
    text = " ".join(note.inner_text().split())
    assert BROKEN in text and " ".join(str(raised.value).split()) in text, text


# ------------------------------------------------------------------------------------------------ the tab
def _fill_training(page, name: str, reward: str, steps: int = 3) -> None:
    page.locator("#reneg_train_prompts textarea").fill("a red cube\na blue ball")
    page.locator("#reneg_train_name textarea").fill(name)
    set_number(page, "reneg_train_steps", steps)
    set_number(page, "reneg_train_batch", 1)
    set_number(page, "reneg_train_ddim_steps", 4)
    set_number(page, "reneg_train_width", 64)
    set_number(page, "reneg_train_height", 64)
    set_number(page, "reneg_train_preview_every", 1)
    set_number(page, "reneg_train_save_every", 0)
    set_number(page, "reneg_train_cfg", 5)
    pick(page, "reneg_train_reward", reward, exact_option=False)


def test_tab_defaults_reward_dropdown_and_thumbnails(webui, page):
    flavour = webui[0]
    open_tab(page, "ReNeg")
    page.locator("#reneg_train_button").wait_for(state="visible")
    steps = int(page.locator("#reneg_train_steps input").first.input_value())
    batch = int(page.locator("#reneg_train_batch input").first.input_value())
    assert steps * batch <= 200, (steps, batch)  # a first try finishes in minutes, not hours
    assert options(page, "reneg_train_reward") == []  # nothing installed in this webui ...
    note = page.locator("#reneg_train_reward_note").last
    assert note.is_visible() and "Settings → ReNeg" in note.inner_text()  # ... and it says where files go
    assert "HPS_v2.1_compressed.pt" in note.inner_text() and "ReNeg-rewards" in note.inner_text()
    shot(page, flavour, "tab-defaults")


def test_tab_trains_with_progress_then_shows_completion(webui, page):
    flavour, _, data = webui
    open_tab(page, "ReNeg")
    _fill_training(page, "browser-run", "synthetic", steps=3)
    page.locator("#reneg_train_button").click()
    progress_seen = []
    deadline = time.time() + 600
    while time.time() < deadline:
        text = inner_html(page, "reneg_train_progress")
        if "step" in text:
            progress_seen.append(text)
            if len(progress_seen) == 1:
                shot(page, flavour, "tab-training-progress")
        if "complete" in inner_html(page, "reneg_train_result"):
            break
        time.sleep(0.25)
    result = inner_html(page, "reneg_train_result")
    page.wait_for_function("() => document.querySelectorAll('#reneg_train_gallery img').length >= 3",
                           timeout=30_000)
    shot(page, flavour, "tab-training-complete")
    assert any(re.search(r"ReNeg training: step \d/3", t) for t in progress_seen), progress_seen
    assert "complete: 3/3 steps" in result and "browser-run.safetensors" in result, result
    assert "Time taken" in result, result
    assert (data / "models" / "ReNeg" / "browser-run.safetensors").is_file()
    # no stale progress text after the run: the progress poller clears it at its next poll after the job ends
    page.wait_for_function("() => { const a = document.querySelectorAll('#reneg_train_progress');"
                           " return !a.length || a[a.length - 1].innerText.trim() === ''; }", timeout=20_000)
    fits = page.evaluate("() => Array.from(document.querySelectorAll('#reneg_train_gallery img'))"
                         ".map(i => getComputedStyle(i).objectFit)")
    assert fits and all(f == "contain" for f in fits), fits  # the reward curve is not cropped


def _fake_hps_file(path: Path) -> None:
    """A torch checkpoint named like HPSv2.1's whose tensors do not fit ViT-H-14 (loads, then fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, path)
    assert zipfile.is_zipfile(path)


@pytest.mark.parametrize("case", ["reward-not-installed", "start-from-wrong-family", "reward-file-broken"])
def test_tab_failed_run_shows_its_error(webui, page, case):
    flavour, _, data = webui
    open_tab(page, "ReNeg")
    # a successful run first, so that its gallery and result are on screen when the failing run starts
    _fill_training(page, f"before-{case}", "synthetic", steps=1)
    page.locator("#reneg_train_button").click()
    page.wait_for_function("() => { const a = document.querySelectorAll('#reneg_train_result');"
                           " return a.length && a[a.length - 1].innerText.includes('complete'); }", timeout=300_000)
    reward, expect = "synthetic", ""
    if case == "reward-not-installed":
        reward, expect = "hpsv2.1", "Settings → ReNeg"
    elif case == "start-from-wrong-family":
        pick(page, "reneg_train_start", WRONG_FAMILY)
        expect = "1024"
    else:
        _fake_hps_file(data / "models" / "ReNeg-rewards" / "HPS_v2.1_compressed.pt")
        page.locator("#reneg_train_reward_refresh").click()
        page.wait_for_function("() => !document.querySelector('#reneg_train_reward_note') ||"
                               " document.querySelector('#reneg_train_reward_note').offsetParent === null",
                               timeout=20_000)
        assert options(page, "reneg_train_reward") == ["hpsv2.1"]  # the dropdown lists what is installed
        reward, expect = "hpsv2.1", "open_clip"
    pick(page, "reneg_train_reward", reward, exact_option=False)
    page.locator("#reneg_train_name textarea").fill(f"fail-{case}")
    page.locator("#reneg_train_button").click()
    page.wait_for_function("() => { const a = document.querySelectorAll('#reneg_train_result .error, "
                           "#reneg_train_result div.error'); return a.length > 0; }", timeout=300_000)
    time.sleep(1.5)  # let the progress poller see the end of the job
    shot(page, flavour, f"tab-error-{case}")
    result = inner_html(page, "reneg_train_result")
    assert expect in result, result
    assert "complete" not in result
    assert page.locator("#reneg_train_gallery img").count() == 0  # the previous run's images are gone
    assert "Waiting" not in inner_html(page, "reneg_train_progress")
    if case == "reward-file-broken":
        (data / "models" / "ReNeg-rewards" / "HPS_v2.1_compressed.pt").unlink()


# ------------------------------------------------------------------------------------------ API and X/Y/Z
def test_api_embedding_choices_follow_the_folder_without_reload(webui):
    from reneg.core.embedding_io import save_embedding

    _, api, data = webui

    def choices():
        info = next(s for s in api.get("/sdapi/v1/script-info") if s["name"] == "reneg" and not s["is_img2img"])
        return info["args"][1]["choices"]

    assert RELEASED_NAME in choices() and BROKEN not in choices()
    new = data / "models" / "ReNeg" / "added-later.safetensors"
    save_embedding(new, torch.randn(1, 77, 768))
    try:
        assert "added-later" in choices()
    finally:
        new.unlink()


def test_api_reports_not_applied_and_skipped_refinement(webui):
    from reneg.a1111_extension.script_logic import args_from_infotext

    _, api, _ = webui
    _, info = txt2img(api, [True, "no-such-file"])
    extra = info["extra_generation_params"]
    assert "not found" in extra.get("ReNeg not applied", ""), extra
    _, info = txt2img(api, [True, RELEASED_NAME, 1.0, True, 2, 2, "hpsv2.1"])
    extra, text = info["extra_generation_params"], info["infotexts"][0]
    assert "not installed" in extra.get("ReNeg refine skipped", ""), extra
    assert f"ReNeg: {RELEASED_NAME}" in text and "ReNeg refine steps" not in text, text
    params = api.post("/sdapi/v1/png-info", {"image": "data:image/png;base64," + _[0]})["parameters"]
    restored = args_from_infotext(params)
    assert restored is not None and restored.enabled and not restored.refine  # paste does not re-enable refine


def test_xyz_plot_axes_exist_and_change_the_output(webui):
    import base64
    import io

    import numpy as np
    from PIL import Image

    _, api, _ = webui
    config = api.get("/config")
    x_type = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "script_txt2img_xyz_plot_x_type")
    labels = [c[0] if isinstance(c, (list, tuple)) else c for c in x_type["props"]["choices"]]
    assert "[ReNeg] Embedding" in labels and "[ReNeg] Strength" in labels, labels

    def grid(axis: str, values: list):
        # an axis with choices takes its values from the dropdown (third arg), others from the text (second)
        text, dropdown = ("", values) if axis == "[ReNeg] Embedding" else (", ".join(map(str, values)), [])
        xyz = [labels.index(axis), text, dropdown, 0, "", [], 0, "", [], True, True, False, False, False, False,
               False, 0, False]
        images, _ = txt2img(api, [False, RELEASED_NAME], script_name="x/y/z plot", script_args=xyz)
        return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")).astype(int)
                for b in images[1:]]  # [grid, cell, cell, ...]

    none, released = grid("[ReNeg] Embedding", ["(none)", RELEASED_NAME])
    assert np.abs(none - released).max() > 0
    weak, strong = grid("[ReNeg] Strength", [0, 1])
    assert np.abs(weak - strong).max() > 0
    assert np.abs(weak - none).max() == 0  # strength 0 = the plain negative prompt
    assert np.abs(strong - released).max() == 0
