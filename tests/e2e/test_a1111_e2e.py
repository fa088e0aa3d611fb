"""Opt-in end-to-end test against a real AUTOMATIC1111 webui (v1.10.x), API only, on CPU.

Run with ``A1111_PATH=/path/to/stable-diffusion-webui`` (a checkout with ``repositories/`` cloned:
stable-diffusion-stability-ai, generative-models, k-diffusion, BLIP, stable-diffusion-webui-assets) and
``A1111_PYTHON=/path/to/python`` (an environment with the webui's requirements and this pack's; default: the
current interpreter). Nothing is downloaded: the test writes a tiny random SD1.x checkpoint with its ``.yaml``
(its text encoder and the real CLIP tokenizer files live in a local folder the yaml names), a ``--data-dir`` with
``models/ReNeg/`` and ``extensions/reneg`` -> this repository, and starts
``launch.py --nowebui --api --use-cpu all --no-half --skip-prepare-environment --skip-install``.

Checks: the script is registered; the embedding replaces the uncond at every step of every pass (first pass,
hires fix, img2img, batch 2, k-diffusion and DDIM samplers) so the negative prompt no longer matters; other
generations are untouched; the webui's DDIM image equals the core engine's CFG-DDIM on the same checkpoint;
infotext and png-info round-trip; a wrong-family embedding is a no-op; per-prompt refinement runs and improves.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

A1111_PATH = os.environ.get("A1111_PATH")
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not A1111_PATH, reason="set A1111_PATH to a stable-diffusion-webui v1.10 checkout")]

REPO = Path(__file__).resolve().parents[2]
EMB = "e2e-sd1-neg"
EMB_WRONG = "e2e-sd2-neg"
PROMPT = "a photo of a cat"
BASE = dict(prompt=PROMPT, negative_prompt="blurry", steps=5, cfg_scale=5, width=64, height=64, seed=123,
            sampler_name="DDIM", batch_size=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Webui:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=900) as r:
            return json.loads(r.read())

    def txt2img(self, reneg_args=None, **kw):
        payload = {**BASE, **kw}
        if reneg_args is not None:
            payload["alwayson_scripts"] = {"reneg": {"args": reneg_args}}
        path = "/sdapi/v1/img2img" if "init_images" in kw else "/sdapi/v1/txt2img"
        out = self.post(path, payload)
        return [_image(b) for b in out["images"]], json.loads(out["info"])["infotexts"][0], out["images"]


def _image(b64: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


def _maxdiff(a, b) -> int:
    return max(int(np.abs(x - y).max()) for x, y in zip(a, b))


@dataclass(frozen=True)
class Host:
    """A webui to launch: its checkout, its Python, files that must exist there, and extra launch flags."""
    name: str
    path: Optional[str]
    python: str
    required: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()


A1111 = Host("A1111", A1111_PATH, os.environ.get("A1111_PYTHON", sys.executable),
             required=("launch.py", "repositories/stable-diffusion-stability-ai"))


def _prepare(data: Path, checkpoint: Optional[Path] = None) -> Path:
    """Checkpoint (default: the tiny one + yaml), two embeddings in models/ReNeg, extensions/reneg -> this repo;
    returns the ckpt."""
    from a1111_tiny_checkpoint import write_checkpoint
    from reneg.core.embedding_io import save_embedding

    if checkpoint is None:
        ckpt = write_checkpoint(data / "models" / "Stable-diffusion", "reneg-tiny", "tiny",
                                text_encoder_dir=data / "tiny-text-encoder")
    else:
        ckpt = data / "models" / "Stable-diffusion" / checkpoint.name
        ckpt.parent.mkdir(parents=True)
        ckpt.symlink_to(checkpoint)
    g = torch.Generator().manual_seed(7)
    save_embedding(data / "models" / "ReNeg" / f"{EMB}.safetensors", torch.randn(1, 77, 768, generator=g) * 0.5)
    save_embedding(data / "models" / "ReNeg" / f"{EMB_WRONG}.safetensors", torch.randn(1, 77, 1024, generator=g))
    (data / "extensions").mkdir()
    (data / "extensions" / "reneg").symlink_to(REPO, target_is_directory=True)
    return ckpt


@contextlib.contextmanager
def _webui(data: Path, ckpt: Path, ui: bool, host: Host = A1111):
    """Run launch.py (API only, or with the gradio UI) on a free loopback port until the API answers."""
    webui = Path(host.path)
    missing = [r for r in host.required if not (webui / r).exists()]
    if missing:
        pytest.skip(f"{webui} is not a {host.name} checkout with {', '.join(missing)}")
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(data / "hf-home")}
    env.pop("RENEG_REWARDS_DIR", None)  # the test decides which rewards are installed
    log_path = data / "webui.log"
    mode = ["--api"] if ui else ["--nowebui", "--api"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [host.python, "launch.py", "--data-dir", str(data), "--ckpt", str(ckpt),
             *mode, "--port", str(port), "--server-name", "127.0.0.1", "--use-cpu", "all", "--no-half",
             "--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-install", "--skip-version-check",
             "--do-not-download-clip", *host.flags], cwd=webui, env=env, stdout=log, stderr=subprocess.STDOUT)
        client = Webui(f"http://127.0.0.1:{port}")
        try:
            deadline = time.time() + 420
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{host.name} exited ({proc.returncode}); log:\n{log_path.read_text()[-4000:]}")
                try:
                    client.get("/sdapi/v1/scripts")
                    if ui:
                        client.get("/config")
                    break
                except (urllib.error.URLError, ConnectionError, OSError):
                    if time.time() > deadline:
                        pytest.fail(f"{host.name} did not start within 420 s; log:\n" + log_path.read_text()[-4000:])
                    time.sleep(2)
            yield client
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = tmp_path_factory.mktemp("a1111-api")
    ckpt = _prepare(data)
    with _webui(data, ckpt, ui=False) as client:
        yield client, data, ckpt


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("a1111-ui")
    ckpt = _prepare(data)
    with _webui(data, ckpt, ui=True) as client:
        yield _ui_ids(client, data)


def _ui_ids(client, data):
    """(client, data, {elem_id: component id}, fn_index of the tab's training job) from the gradio config."""
    config = client.get("/config")
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"] if c.get("props", {}).get("elem_id")}
    # the Train button first clears the old result, then runs the job: the job is the step with the JS hook
    fn_index = next((i for i, d in enumerate(config["dependencies"])
                     if "reneg_start_training" in str(d.get("js") or "")), None)
    return client, data, ids, fn_index


def test_script_is_registered_with_documented_args(setup):
    ui, _, _ = setup
    scripts = ui.get("/sdapi/v1/scripts")
    assert "reneg" in scripts["txt2img"] and "reneg" in scripts["img2img"]
    info = next(s for s in ui.get("/sdapi/v1/script-info") if s["name"] == "reneg" and not s["is_img2img"])
    assert info["is_alwayson"]
    assert [a["label"] for a in info["args"]] == ["ReNeg", "Negative embedding", "Strength", "Refine for this prompt",
                                                  "Max refine steps", "Patience", "Reward"]
    assert EMB in info["args"][1]["choices"]


def test_embedding_replaces_uncond_and_leaves_other_generations_alone(setup):
    ui, _, _ = setup
    before, _, _ = ui.txt2img()
    with_neg, info, _ = ui.txt2img([True, EMB])
    other_negative, _, _ = ui.txt2img([True, EMB], negative_prompt="lowres, bad hands, watermark")
    after, info_after, _ = ui.txt2img()
    assert f"ReNeg: {EMB}" in info and "ReNeg hash: " in info
    assert _maxdiff(with_neg, other_negative) == 0  # the negative prompt is fully replaced
    assert _maxdiff(with_neg, before) > 0
    assert _maxdiff(before, after) == 0 and "ReNeg" not in info_after  # no leak into later generations


def test_webui_ddim_equals_core_engine(setup):
    """The webui's DDIM image with the embedding == the core's CFG-DDIM with that negative (same checkpoint)."""
    from safetensors.torch import load_file

    from reneg.a1111_extension.model_adapter import LdmBackend
    from a1111_tiny_checkpoint import build_ldm
    from reneg.core.ddim import initial_latents, sample
    from reneg.core.embedding_io import load_embedding

    ui, data, ckpt = setup
    images, _, _ = ui.txt2img([True, EMB])
    model = build_ldm("tiny", data / "tiny-text-encoder")
    model.load_state_dict(load_file(str(ckpt)), strict=True)
    backend = LdmBackend(model)
    cond = backend.encode_prompts([PROMPT])
    negative = load_embedding(data / "models" / "ReNeg" / f"{EMB}.safetensors").tensor
    latents = initial_latents(backend, 1, 64, 64, BASE["seed"])
    # the webui's DDIM visits timesteps[steps-1..1] and returns x at t=1: the core's first steps-1 steps
    x = sample(backend, cond, negative, latents, BASE["steps"], BASE["cfg_scale"], stop_index=BASE["steps"] - 1)
    ours = (backend.decode(x)[0].permute(1, 2, 0).numpy() * 255.0).astype(np.uint8).astype(int)
    assert int(np.abs(ours - images[0]).max()) <= 1


@pytest.mark.parametrize("case", ["batch2-euler-a", "hires-fix", "img2img", "long-prompt"])
def test_every_pass_and_sampler_is_replaced(setup, case):
    from PIL import Image

    ui, _, _ = setup
    kw: dict = {}
    if case == "batch2-euler-a":
        kw = dict(sampler_name="Euler a", batch_size=2)
    elif case == "hires-fix":
        kw = dict(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.6, hr_second_pass_steps=3)
    elif case == "img2img":
        buf = io.BytesIO()
        Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8)).save(buf, format="PNG")
        kw = dict(init_images=[base64.b64encode(buf.getvalue()).decode()], denoising_strength=0.7)
    elif case == "long-prompt":
        kw = dict(prompt=", ".join(["a very detailed photo of a small cat"] * 12))  # > 75 tokens: 2 chunks
    a, _, _ = ui.txt2img([True, EMB], **kw)
    b, _, _ = ui.txt2img([True, EMB], negative_prompt=", ".join(["ugly"] * 90), **kw)  # even a 2-chunk negative
    plain, _, _ = ui.txt2img(None, **kw)
    assert len(a) == (2 if case == "batch2-euler-a" else 1)
    assert _maxdiff(a, b) == 0
    assert _maxdiff(a, plain) > 0


def test_strength_infotext_and_png_info_roundtrip(setup):
    from reneg.a1111_extension.script_logic import ScriptArgs, args_from_infotext

    ui, _, _ = setup
    half, info, raw = ui.txt2img([True, EMB, 0.5])
    full, _, _ = ui.txt2img([True, EMB])
    plain, _, _ = ui.txt2img()
    assert _maxdiff(half, full) > 0 and _maxdiff(half, plain) > 0
    assert "ReNeg strength: 0.5" in info
    params = ui.post("/sdapi/v1/png-info", {"image": "data:image/png;base64," + raw[0]})["parameters"]
    assert args_from_infotext(params) == ScriptArgs(enabled=True, embedding=EMB, strength=0.5)


def test_wrong_family_embedding_is_a_noop(setup):
    ui, _, _ = setup
    plain, _, _ = ui.txt2img()
    wrong, info, _ = ui.txt2img([True, EMB_WRONG])
    assert _maxdiff(plain, wrong) == 0
    assert f"ReNeg: {EMB_WRONG}" not in info


def test_refine_for_this_prompt(setup):
    ui, _, _ = setup
    refined, info, _ = ui.txt2img([True, EMB, 1.0, True, 3, 2, "synthetic"])
    plain_emb, _, _ = ui.txt2img([True, EMB])
    assert "ReNeg refine steps: 3" in info and "ReNeg reward: synthetic" in info
    value = info.split("ReNeg refined: ")[1].split(",")[0]
    start, best = (float(v) for v in value.split(" (")[0].split("->"))
    assert best >= start
    if best > start:  # a better iterate was found: the sampled image uses it
        assert _maxdiff(refined, plain_emb) > 0
    long_prompt = ", ".join(["a very detailed photo of a small cat"] * 12)  # > 75 tokens: 2 chunks
    _, info_long, _ = ui.txt2img([True, EMB, 1.0, True, 2, 2, "synthetic"], prompt=long_prompt)
    assert "ReNeg refined: " in info_long


# ---------------------------------------------------------------------------------------------- the ReNeg tab
def _train_args(task, name, steps, *, resume=False, start="(empty prompt)", preview_every=2):
    return [task, "a red cube\na blue ball", "", name, start, resume, False, steps, 2, 1, 0.01, "synthetic", 5, 4,
            64, 64, 0, preview_every, 0, ""]


def _progress(client, task):
    return client.post("/internal/progress", {"id_task": task, "id_live_preview": -1, "live_preview": True})


def _run_tab(client, fn_index, data, stop_at=None):
    """Call the tab's Train handler through gradio; poll progress meanwhile; optionally interrupt at a step."""
    task = data[0]
    result, seen = {}, []
    worker = threading.Thread(target=lambda: result.update(
        out=client.post("/run/predict", {"fn_index": fn_index, "data": data, "session_hash": "reneg-e2e"})))
    worker.start()
    while worker.is_alive():
        r = _progress(client, task)
        if r.get("active"):
            seen.append(r)
            text = r.get("textinfo") or ""
            if stop_at and "step " in text and int(text.split("step ")[1].split("/")[0]) >= stop_at:
                client.post("/sdapi/v1/interrupt", {})
                stop_at = None
        time.sleep(0.3)
    worker.join()
    return result["out"]["data"], seen


def test_tab_settings_and_accordion_are_built(ui_server):
    _, _, ids, fn_index = ui_server
    assert fn_index is not None
    for elem in ("tab_reneg_tab", "reneg_train_prompts", "reneg_train_interrupt", "reneg_train_gallery",
                 "setting_reneg_dir", "setting_reneg_default_reward", "script_txt2img_reneg_embedding",
                 "script_img2img_reneg_refine"):
        assert elem in ids, elem


def test_tab_trains_with_live_progress(ui_server):
    from reneg.core.embedding_io import load_embedding

    client, data, _, fn_index = ui_server
    (gallery, html), seen = _run_tab(client, fn_index, _train_args("task(reneg-e2e-train)", "tab-run", 4))
    assert "complete: 4/4 steps" in html
    assert len(gallery) == 3  # before, after, reward curve
    assert any("ReNeg training: step" in (r.get("textinfo") or "") for r in seen)
    assert any(r.get("live_preview") for r in seen)
    emb = load_embedding(data / "models" / "ReNeg" / "tab-run.safetensors")
    assert emb.metadata["status"] == "complete" and emb.tensor.shape == (1, 77, 768)
    assert (data / "models" / "ReNeg" / "tab-run.rewards.png").is_file()


def test_tab_interrupt_keeps_valid_file_and_resume_finishes(ui_server):
    from reneg.core.embedding_io import load_embedding

    client, data, _, fn_index = ui_server
    out = data / "models" / "ReNeg" / "tab-int.safetensors"
    (_, html), _ = _run_tab(client, fn_index, _train_args("task(reneg-e2e-int)", "tab-int", 12, start=EMB,
                                                          preview_every=0), stop_at=2)
    assert "interrupted" in html
    emb = load_embedding(out)
    assert emb.metadata["status"] == "partial" and 2 <= int(emb.metadata["steps"]) < 12
    assert torch.isfinite(emb.tensor).all()
    (_, html2), _ = _run_tab(client, fn_index, _train_args("task(reneg-e2e-res)", "tab-int", 12, resume=True,
                                                           start=EMB, preview_every=0))
    assert "complete: 12/12 steps" in html2
    assert load_embedding(out).metadata["status"] == "complete"
