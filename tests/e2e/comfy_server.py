"""Run a real ComfyUI headless for end-to-end tests and talk to it over HTTP (stdlib only; no ComfyUI import).

Environment: ``COMFYUI_PATH`` (a ComfyUI checkout; tests skip without it), ``COMFYUI_PYTHON`` (the Python with
ComfyUI's requirements; default: the test's own), ``RENEG_E2E_CACHE`` (folder to keep the ~470 MB test
checkpoint between runs; default: a temporary folder).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CHECKPOINT_NAME = "reneg_tiny_sd15.safetensors"
#: Installed under a folder name other than "reneg": the pack must not depend on its directory name.
PACK_FOLDER = "ComfyUI-ReNeg-e2e"
#: Bump when build_sd15_checkpoint changes so cached checkpoints are rebuilt.
CHECKPOINT_VERSION = "1"


def comfyui_path() -> Optional[Path]:
    root = os.environ.get("COMFYUI_PATH")
    return Path(root) if root else None


def comfyui_python() -> str:
    return os.environ.get("COMFYUI_PYTHON", sys.executable)


def skip_reason() -> Optional[str]:
    """Why ComfyUI tests cannot run here (None: they can)."""
    root = comfyui_path()
    if root is None:
        return "needs a ComfyUI checkout: set COMFYUI_PATH (and COMFYUI_PYTHON if ComfyUI has its own Python)"
    if not (root / "main.py").is_file() or not (root / "comfy").is_dir():
        return f"COMFYUI_PATH={root} is not a ComfyUI checkout (no main.py / comfy/)"
    return None


def run_helper(*args: str, timeout: float = 900) -> str:
    """Run ``comfy_builders.py`` with ComfyUI's Python (so this process never imports ``comfy``)."""
    env = {**os.environ, "COMFYUI_PATH": str(comfyui_path())}
    proc = subprocess.run([comfyui_python(), str(HERE / "comfy_builders.py"), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"comfy_builders.py {args[0]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout.strip().splitlines()[-1]


def ensure_checkpoint(cache_dir: Path) -> Path:
    """Build the tiny SD1.5-architecture checkpoint once per cache folder (and checkpoint version)."""
    path = cache_dir / f"v{CHECKPOINT_VERSION}" / CHECKPOINT_NAME
    if not path.is_file():
        run_helper("checkpoint", str(path))
    return path


PIXART_CHECKPOINT_NAME = "reneg_tiny_pixart_alpha.safetensors"
#: Bump when build_pixart_checkpoint changes.
PIXART_CHECKPOINT_VERSION = "1"


def ensure_pixart_checkpoint(cache_dir: Path) -> Path:
    """Build the tiny PixArt-α checkpoint (~270 MB: one 1152-wide block + the SD VAE) once per cache folder."""
    path = cache_dir / f"pixart-v{PIXART_CHECKPOINT_VERSION}" / PIXART_CHECKPOINT_NAME
    if not path.is_file():
        run_helper("pixart-checkpoint", str(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``python main.py --cpu`` on a private base directory with this pack (and the probe pack) installed."""

    def __init__(self, base_dir: Path, checkpoint: Path, embeddings: dict[str, Path],
                 checkpoint_name: str = CHECKPOINT_NAME):
        self.base = base_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        custom = base_dir / "custom_nodes"
        custom.mkdir(parents=True, exist_ok=True)
        (custom / PACK_FOLDER).symlink_to(REPO_ROOT, target_is_directory=True)
        probe = custom / "reneg_e2e_probe"
        probe.mkdir()
        shutil.copy(HERE / "probe_node.py", probe / "__init__.py")
        ckpts = base_dir / "models" / "checkpoints"
        ckpts.mkdir(parents=True)
        (ckpts / checkpoint_name).symlink_to(checkpoint)
        reneg_dir = base_dir / "models" / "reneg"
        reneg_dir.mkdir(parents=True)
        for name, src in embeddings.items():
            (reneg_dir / name).symlink_to(src)
        self.reneg_dir = reneg_dir
        self.output_dir = base_dir / "output"
        self.log_path = base_dir / "comfyui.log"
        self.proc: Optional[subprocess.Popen] = None

    # --- process ----------------------------------------------------------------------------------------------
    def start(self, timeout: float = 300) -> "ComfyServer":
        cmd = [comfyui_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--disable-auto-launch", "--disable-api-nodes",
               "--database-url", f"sqlite:///{self.base / 'comfyui.db'}"]
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(comfyui_path()), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited ({self.proc.returncode}) during start:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1.0)
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    # --- HTTP -------------------------------------------------------------------------------------------------
    def get(self, route: str) -> Any:
        with urllib.request.urlopen(self.url + route, timeout=30) as resp:
            return json.loads(resp.read().decode())

    def post(self, route: str, payload: Optional[dict] = None) -> tuple[int, Any]:
        data = json.dumps(payload or {}).encode()
        req = urllib.request.Request(self.url + route, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                body = resp.read().decode()
                return resp.status, json.loads(body) if body else None
        except urllib.error.HTTPError as err:
            body = err.read().decode()
            try:
                return err.code, json.loads(body)
            except json.JSONDecodeError:
                return err.code, body

    def queue(self, graph: dict) -> str:
        status, body = self.post("/prompt", {"prompt": graph, "client_id": "reneg-e2e"})
        if status != 200:
            raise AssertionError(f"/prompt refused the graph ({status}): {json.dumps(body, indent=1)[:4000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 900) -> dict:
        """The /history entry of a finished prompt (success, error or interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") is not None:
                entry = hist[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died:\n{self.log_tail()}")
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} not done within {timeout}s:\n{self.log_tail()}")

    def run(self, graph: dict, timeout: float = 900) -> dict:
        """Queue a graph, wait, and require success (with the server log in the failure message)."""
        entry = self.wait(self.queue(graph), timeout)
        if entry["status"]["status_str"] != "success":
            raise AssertionError(f"prompt failed: {json.dumps(entry['status'], indent=1)[:6000]}\n"
                                 f"--- server log ---\n{self.log_tail()}")
        return entry

    def interrupt(self) -> None:
        self.post("/interrupt")


def add_probed_samplers(graph: dict, negatives: dict, sampler) -> None:
    """Add to ``graph`` one probed KSampler -> VAE Decode -> Save Image chain per ``{tag: negative link}``
    (``sampler(negative, tag)`` builds the chain's nodes ``ks``/``decode``/``save_img``), each node id suffixed
    with ``_<tag>`` and its UNet wrapped by a ``ReNegE2EProbe`` tagged ``tag``; drops the base graph's probe."""
    for tag, negative in negatives.items():
        graph[f"probe_{tag}"] = {"class_type": "ReNegE2EProbe", "inputs": {"model": ["ckpt", 0], "tag": tag}}
        parts = sampler(negative, tag)
        parts["ks"]["inputs"]["model"] = [f"probe_{tag}", 0]
        parts["decode"]["inputs"]["samples"] = [f"ks_{tag}", 0]
        parts["save_img"]["inputs"]["images"] = [f"decode_{tag}", 0]
        graph.update({f"{k}_{tag}": v for k, v in parts.items()})
    graph.pop("probe", None)


def add_reference_rows(graph: dict, tag: str, prompts: list[str], clip: list, negative: list, size: int) -> None:
    """Add to ``graph``, for each prompt ``i``, the reference a batch row is compared with: CLIP Text Encode of the
    prompt (from ``clip``) sampled alone with ``negative`` by a copy of the graph's ``ks`` (its UNet probed as
    ``<tag>_ref<i>``) on a 1-image ``size``² latent, decoded and previewed."""
    for i, text in enumerate(prompts):
        graph[f"pos{i}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}}
        graph[f"probe{i}"] = {"class_type": "ReNegE2EProbe", "inputs": {"model": ["ckpt", 0], "tag": f"{tag}_ref{i}"}}
        graph[f"lat{i}"] = {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}}
        graph[f"ks{i}"] = {"class_type": "KSampler", "inputs": {
            **graph["ks"]["inputs"], "model": [f"probe{i}", 0], "positive": [f"pos{i}", 0],
            "negative": negative, "latent_image": [f"lat{i}", 0]}}
        graph[f"dec{i}"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"ks{i}", 0], "vae": ["ckpt", 2]}}
        graph[f"prev{i}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"dec{i}", 0]}}


def message_types(entry: dict) -> list[str]:
    return [m[0] for m in entry.get("status", {}).get("messages", [])]
