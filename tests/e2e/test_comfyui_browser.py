"""ComfyUI's real frontend in a real browser (headless Chromium driven by PyPI ``playwright``'s sync API).

What a user does, through the page: open ComfyUI with the pack, find the nodes with the node search, open the
templates, load every ``example_workflows/`` file through the frontend (``app.loadGraphData``, the code path of a
dropped/opened file), check the widget values the frontend shows are the saved ones, press **Run** and wait for
success with outputs. Screenshots are kept in ``outputs/screenshots/comfyui/`` (gitignored; ``RENEG_SCREENSHOTS``
moves them) — look at them.

Environment (the same as ``test_comfyui_e2e.py``): ``COMFYUI_PATH``, ``COMFYUI_PYTHON``, ``RENEG_E2E_CACHE``, plus
``RENEG_CHROMIUM`` (default ``/usr/bin/chromium``). ``RENEG_WRITE_THUMBNAILS=1`` also writes each example's
template thumbnail (``example_workflows/<name>.jpg``) from the canvas after its run.
"""
from __future__ import annotations

import json
import os
import re
import urllib.parse
from pathlib import Path

import pytest
import torch

import comfy_server as cs
import webui_sdxl_checkpoint
from reneg.core.embedding_io import load_embedding, save_embedding

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(cs.skip_reason() is not None, reason=str(cs.skip_reason()))]

RELEASED = cs.REPO_ROOT.parent / "shared" / "fixtures" / "released"
EXAMPLES = sorted((cs.REPO_ROOT / "example_workflows").glob("*.json"))
SCREENSHOTS = Path(os.environ.get("RENEG_SCREENSHOTS") or cs.REPO_ROOT / "outputs" / "screenshots" / "comfyui")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
RENEG_NODES = {"ReNegLoadEmbedding": "Load ReNeg Embedding", "ReNegLoadReward": "Load ReNeg Reward",
               "ReNegRefine": "ReNeg Refine (per prompt)", "ReNegTrainGlobal": "ReNeg Train Global",
               "ReNegSaveEmbedding": "Save ReNeg Embedding"}
#: Console errors ComfyUI 0.3.64's own frontend (1.27.10) logs on a fresh base directory with or without any custom
#: node: optional per-user files that do not exist yet, a settings watcher reading a not-yet-open workflow, and the
#: canvas switching away from the never-shown first tab when a workflow is opened.
FRONTEND_NOISE_URLS = re.compile(r"/api/userdata(/user\.css|/comfy\.templates\.json|\?dir=)|/user\.css$")
FRONTEND_NOISE_ERRORS = re.compile(r"^Cannot read properties of undefined \(reading 'id'\)$")
FRONTEND_NOISE_CONSOLE = re.compile(r"^Attempted to cleanup event listeners for graph that was never set up$")
#: Test-size settings applied through the widgets before Run (by widget name; only where the node has them).
SHRINK = {"ckpt_name": cs.CHECKPOINT_NAME, "width": 64, "height": 64, "batch_size": 1, "steps": 2,
          "sampling_steps": 4, "max_steps": 2, "save_every": 0, "preview_every": 1, "reward": "tiny"}


def is_sdxl_example(path: Path) -> bool:
    return "SDXL" in path.stem


def chromium_path() -> str:
    path = os.environ.get("RENEG_CHROMIUM") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.skip(f"needs Chromium for the browser tests: install Debian's chromium or set RENEG_CHROMIUM "
                    f"(not found: {path})")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cache = Path(os.environ.get("RENEG_E2E_CACHE") or tmp_path_factory.mktemp("ckpt"))
    checkpoint = cs.ensure_checkpoint(cache)
    emb_dir = tmp_path_factory.mktemp("emb")
    embeddings = {"e2e_random.safetensors": save_embedding(emb_dir / "e2e_random.safetensors",
                                                           torch.randn(1, 77, 768) * 0.1, note="e2e")}
    for path in sorted(RELEASED.glob("sd*_reneg_emb.bin")):
        embeddings[path.name] = path
    srv = cs.ComfyServer(tmp_path_factory.mktemp("comfy_base"), checkpoint, embeddings)
    if any(is_sdxl_example(p) for p in EXAMPLES):  # the SDXL example runs on an SDXL checkpoint with its CLIPs
        webui_sdxl_checkpoint.link_into(srv.base / "models" / "checkpoints", webui_sdxl_checkpoint.ensure(cache))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs PyPI playwright for the browser tests")
    executable = chromium_path()
    pw = sync_api.sync_playwright().start()
    chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
    yield chromium
    chromium.close()
    pw.stop()


class ComfyPage:
    """One browser tab on the ComfyUI server, recording console errors, page errors and failed requests."""

    def __init__(self, browser, server):
        self.server = server
        self.page = browser.new_page(viewport={"width": 1600, "height": 1000})
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.responses: list[tuple[int, str]] = []
        self.page.on("response", self._response)

    def _response(self, response) -> None:
        self.responses.append((response.status, urllib.parse.unquote(response.url)))
        if response.status >= 400:
            self.errors.append(f"http {response.status}: {response.url}")

    def open(self) -> "ComfyPage":
        self.page.goto(self.server.url, wait_until="domcontentloaded", timeout=120_000)
        self.page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph"
                                    " && LiteGraph.registered_node_types['KSampler']", timeout=120_000)
        self.page.wait_for_timeout(1500)  # first-run dialogs open after the graph
        self.page.keyboard.press("Escape")
        return self

    def js(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def unexpected_errors(self) -> list[str]:
        """Errors other than the frontend's own noise; 'Failed to load resource' lines are judged by their URL."""
        return [e for e in self.errors
                if not (e.startswith("console: Failed to load resource")
                        or (e.startswith("console: ") and FRONTEND_NOISE_CONSOLE.match(e[len("console: "):]))
                        or (e.startswith("http") and FRONTEND_NOISE_URLS.search(e))
                        or (e.startswith("pageerror: ") and FRONTEND_NOISE_ERRORS.match(e[len("pageerror: "):])))]

    def screenshot(self, name: str, canvas_only: bool = False) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        target = self.page.locator("#graph-canvas") if canvas_only else self.page
        target.screenshot(path=str(path))
        return path

    def fit_view(self) -> None:
        minimap = self.page.locator("[data-testid=close-minmap-button]")
        if minimap.count() and minimap.first.is_visible():
            minimap.first.click()
        self.page.get_by_role("button", name="Fit View (.)").click()
        self.page.wait_for_timeout(600)

    def load(self, workflow: dict, name: str) -> None:
        self.js("async ([wf, name]) => { await app.loadGraphData(wf, true, true, name); }", [workflow, name])
        self.page.wait_for_timeout(500)

    def nodes(self) -> dict[int, dict]:
        return {n["id"]: n for n in self.js("""() => app.graph.nodes.map(n => ({
            id: n.id, type: n.type, title: n.title, bounding: Array.from(n.getBounding()),
            widgets: (n.widgets || []).map(w => ({name: w.name, value: w.value, options: {
                min: w.options?.min, max: w.options?.max, values: Array.isArray(w.options?.values) ? w.options.values : null}})),
            images: (n.imgs || []).length}))""")}

    def set_widget(self, node_id: int, name: str, value) -> None:
        self.js("""([id, name, value]) => {
            const w = app.graph.getNodeById(id).widgets.find(w => w.name === name);
            w.value = value; w.callback?.(value); app.graph.setDirtyCanvas(true, true); }""", [node_id, name, value])

    def queued_prompt(self) -> dict:
        """What the frontend sends for the current graph (its own UI -> API conversion)."""
        return self.js("async () => (await app.graphToPrompt()).output")

    def click_run(self) -> str:
        """Press the Run button; the prompt id the server gave the queued graph."""
        with self.page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as resp:
            self.page.get_by_role("button", name="Run", exact=True).click()
        body = resp.value.json()
        assert resp.value.status == 200, f"the server refused the graph: {json.dumps(body)[:3000]}"
        return body["prompt_id"]

    def run_and_wait(self, timeout: float = 900) -> dict:
        prompt_id = self.click_run()
        entry = self.server.wait(prompt_id, timeout)
        assert entry["status"]["status_str"] == "success", (
            f"Run failed: {json.dumps(entry['status'], indent=1)[:6000]}\n--- server log ---\n"
            f"{self.server.log_tail()}")
        assert entry["outputs"], "Run finished without outputs"
        return entry

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def comfy(browser, server):
    page = ComfyPage(browser, server).open()
    yield page
    page.close()


def widget_values(node: dict) -> list:
    return [w["value"] for w in node["widgets"]]


def _overlaps(a: list[float], b: list[float]) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


# --- the page and the nodes ---------------------------------------------------------------------------------
def test_page_loads_with_the_pack_and_no_console_errors_from_it(comfy):
    registered = comfy.js("() => Object.keys(LiteGraph.registered_node_types).filter(t => t.startsWith('ReNeg'))")
    assert set(RENEG_NODES) <= set(registered), registered
    titles = comfy.js("() => Object.fromEntries(Object.entries(LiteGraph.registered_node_types)"
                      ".filter(([t]) => t.startsWith('ReNeg')).map(([t, c]) => [t, c.title]))")
    assert {t: titles[t] for t in RENEG_NODES} == RENEG_NODES
    comfy.screenshot("01_page_loaded")
    assert not comfy.unexpected_errors(), comfy.unexpected_errors()
    assert not [e for e in comfy.errors if re.search(r"reneg", e, re.I)], comfy.errors


def test_node_search_finds_the_reneg_nodes_and_adds_them_with_fixed_seeds(comfy):
    """Double-click the empty canvas, type: every ReNeg node is offered. A Refine or Train node added from the
    search has a plain seed widget with no 'control after generate' (issue 3b/3d: nothing randomises on Run)."""
    comfy.js("() => { app.graph.clear(); app.canvas.setDirty(true, true); }")
    added = {}
    for (x, y), query, node_type in (((700, 300), "ReNeg", "ReNegRefine"),
                                     ((1250, 300), "ReNeg Train Global", "ReNegTrainGlobal")):
        comfy.page.mouse.dblclick(x, y)  # empty canvas (the first node lands at the first click)
        box = comfy.page.get_by_placeholder("Search Nodes...")
        box.wait_for(timeout=10_000)
        box.fill(query)
        comfy.page.wait_for_timeout(800)
        offered = comfy.js("() => [...document.querySelectorAll('.p-autocomplete-option')].map(e => e.innerText)")
        if query == "ReNeg":
            comfy.screenshot("02_node_search")
            for title in RENEG_NODES.values():
                assert any(o.startswith(title) for o in offered), f"{title!r} not offered: {offered}"
        assert offered and offered[0].startswith(RENEG_NODES[node_type]), offered
        comfy.page.keyboard.press("Enter")
        comfy.page.wait_for_timeout(500)
        nodes = [n for n in comfy.nodes().values() if n["type"] == node_type]
        assert len(nodes) == 1, comfy.nodes()
        added[node_type] = nodes[0]
    for node in added.values():
        names = [w["name"] for w in node["widgets"]]
        assert "seed" in names and "control_after_generate" not in names, names
    comfy.fit_view()
    comfy.screenshot("03_nodes_added_from_search")
    assert not comfy.unexpected_errors(), comfy.unexpected_errors()


def test_templates_show_the_examples_with_titles_and_thumbnails(comfy, server):
    comfy.page.get_by_role("button", name="Templates").first.click()
    comfy.page.get_by_text(cs.PACK_FOLDER, exact=True).first.click()
    comfy.page.wait_for_timeout(1500)
    comfy.page.locator("[data-testid^='template-workflow-'] img").first.wait_for(timeout=15_000)
    comfy.page.wait_for_timeout(1000)
    cards = comfy.js("""() => Object.fromEntries([...document.querySelectorAll("[data-testid^='template-workflow-']")]
        .map(c => [c.getAttribute('data-testid').slice('template-workflow-'.length), {text: c.innerText,
            imgs: [...c.querySelectorAll('img')].map(i => ({src: i.src, ok: i.complete && i.naturalWidth > 0}))}]))""")
    comfy.screenshot("04_templates")
    assert sorted(cards) == sorted(p.stem for p in EXAMPLES), list(cards)
    for path in EXAMPLES:
        card = cards[path.stem]
        assert card["text"].startswith(path.stem), card  # the title is the readable file name
        assert any(i["ok"] for i in card["imgs"]), f"no thumbnail shown: {card}"  # (a blob of the fetched file)
        assert (200, f"{server.url}/api/workflow_templates/{cs.PACK_FOLDER}/{path.stem}.jpg") in comfy.responses
    assert not comfy.unexpected_errors(), comfy.unexpected_errors()


# --- every example, loaded and run through the frontend ----------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_loads_through_the_frontend_and_runs(comfy, server, path):
    workflow = json.loads(path.read_text())
    comfy.load(workflow, path.name)
    nodes = comfy.nodes()
    assert sorted(nodes) == sorted(n["id"] for n in workflow["nodes"])
    # issue 3a: the frontend adds widgets (a seed's 'control after generate'); saved values must not shift
    for saved in workflow["nodes"]:
        shown = nodes[saved["id"]]
        if "widgets_values" in saved:
            assert widget_values(shown) == saved["widgets_values"], (saved["type"], shown["widgets"])
        for w in shown["widgets"]:
            opts, value = w["options"], w["value"]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert (opts["min"] is None or value >= opts["min"]) and (opts["max"] is None or value <= opts["max"]), (
                    saved["type"], w)
    for i, a in enumerate(nodes.values()):  # no node covers another
        for b in list(nodes.values())[i + 1:]:
            assert not _overlaps(a["bounding"], b["bounding"]), f"{a['title']} overlaps {b['title']}"
    comfy.fit_view()
    comfy.screenshot(f"10_{path.stem}_loaded")

    sent = comfy.queued_prompt()  # what Run sends, converted by the frontend
    by_type = {}
    for nid, node in sent.items():
        by_type.setdefault(node["class_type"], []).append((nid, node["inputs"]))
    check_example_wiring(path, by_type)

    for nid, node in nodes.items():  # test-size settings, typed into the widgets as a user would
        for w in node["widgets"]:
            value = SHRINK.get(w["name"])
            if w["name"] == "ckpt_name" and is_sdxl_example(path):
                value = f"{webui_sdxl_checkpoint.NAME}.safetensors"  # random SDXL-family weights, full-size CLIPs
            if w["name"] == "steps" and node["type"] == "KSampler":
                value = 3
            if node["type"] == "ReNegLoadEmbedding" and w["name"] == "embedding" and not (
                    server.reneg_dir / w["value"]).exists():
                value = "e2e_random.safetensors"  # offline: no released file to download
            if node["type"] == "ReNegTrainGlobal" and w["name"] == "save_name":
                value = f"browser_{path.stem.split()[-1]}"
            if value is not None and (w["options"]["values"] is None or value in w["options"]["values"]):
                comfy.set_widget(nid, w["name"], value)
    entry = comfy.run_and_wait()
    kinds = cs.message_types(entry)
    assert "execution_success" in kinds and "execution_error" not in kinds, kinds
    comfy.page.wait_for_function("() => app.graph.nodes.some(n => n.type === 'SaveImage' && (n.imgs || []).length)",
                                 timeout=60_000)  # the result image is shown on the canvas
    # a wide window keeps the fitted zoom above the frontend's low-quality threshold (text and images drawn)
    comfy.page.set_viewport_size({"width": 2400, "height": 1300})
    comfy.fit_view()
    shot = comfy.screenshot(f"11_{path.stem}_after_run")
    if os.environ.get("RENEG_WRITE_THUMBNAILS") == "1":
        write_thumbnail(comfy, path)
    comfy.page.set_viewport_size({"width": 1600, "height": 1000})

    after = comfy.nodes()
    seeds = [n for n in after.values() if n["type"] == "PrimitiveInt"]
    for node in seeds:  # issue 3d: the shared seed stays fixed after Run
        assert widget_values(node) == widget_values(nodes[node["id"]]), node

    if any(n["type"] == "ReNegTrainGlobal" for n in after.values()):
        rerun_and_extend_training(comfy, server, after)
    assert not comfy.unexpected_errors(), (comfy.unexpected_errors(), shot)


def check_example_wiring(path: Path, by_type: dict) -> None:
    """What the frontend queues for the examples: one seed for Refine and KSampler, the prompt typed once."""
    if "ReNegRefine" not in by_type:
        return
    (_, refine), = by_type["ReNegRefine"]
    (_, ks), = by_type["KSampler"]
    refine_id = next(nid for nid, _ in by_type["ReNegRefine"])
    assert all(refine["negative"] == [nid, 0] for nid, _ in by_type.get("CLIPTextEncode", ())), (
        "the prompt should be typed once, in ReNeg Refine (a CLIP Text Encode may only give it its start negative)")
    assert ks["positive"] == [refine_id, 0] and ks["negative"] == [refine_id, 1]
    assert isinstance(refine["seed"], list) and refine["seed"] == ks["seed"], (refine["seed"], ks["seed"])
    assert by_type["PrimitiveInt"][0][0] == refine["seed"][0]


def rerun_and_extend_training(comfy: ComfyPage, server, nodes: dict) -> None:
    """Issue 3b through the UI: Run again unchanged, then ask for more steps (2 -> 4): both succeed and the saved
    embedding continues to 4 steps."""
    (train_id, train), = [(i, n) for i, n in nodes.items() if n["type"] == "ReNegTrainGlobal"]
    save_name = next(w["value"] for w in train["widgets"] if w["name"] == "save_name")
    out = server.reneg_dir / f"{save_name}.safetensors"
    assert load_embedding(out).metadata["steps"] == "2"
    comfy.run_and_wait()
    comfy.set_widget(train_id, "steps", 4)
    comfy.run_and_wait()
    meta = load_embedding(out).metadata
    assert (meta["steps"], meta["status"]) == ("4", "complete"), meta
    comfy.screenshot("12_train_continued_to_4_steps")


def write_thumbnail(comfy: ComfyPage, path: Path) -> None:
    """The template thumbnail: the graph as drawn after the real run, letterboxed to a square 512 px JPEG (the
    template card shows its image square, cropped to the centre)."""
    from PIL import Image

    x, y, w, h = comfy.js("""() => {
        const ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect();
        let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
        for (const n of app.graph.nodes) { const [x, y, w, h] = n.getBounding();
            x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h); }
        return [r.left + (x0 + ds.offset[0]) * ds.scale, r.top + (y0 + ds.offset[1]) * ds.scale,
                (x1 - x0) * ds.scale, (y1 - y0) * ds.scale]; }""")
    pad = 16
    png = SCREENSHOTS / f"thumb_{path.stem}.png"
    comfy.page.screenshot(path=str(png), clip={"x": max(0, x - pad), "y": max(0, y - pad),
                                               "width": w + 2 * pad, "height": h + 2 * pad})
    with Image.open(png) as im:
        im = im.convert("RGB")
        side = max(im.size)
        square = Image.new("RGB", (side, side), im.getpixel((2, 2)))
        square.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
        square.resize((512, 512), Image.LANCZOS).save(path.with_suffix(".jpg"), quality=85, optimize=True)
