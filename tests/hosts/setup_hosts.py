"""Set up the real host UIs (ComfyUI, A1111, Forge) for the end-to-end tests — stdlib only, run by plain python3.

    python3 tests/hosts/setup_hosts.py [--cache DIR] [--shared DIR] [--hosts comfyui,a1111,forge]

1. Verifies ``<shared>/hosts/SHA256SUMS`` (default shared: ``../shared`` beside the checkout) and unpacks each
   snapshot into a cache OUTSIDE the repo: ``--cache`` / ``$RENEG_HOSTS_CACHE`` / ``~/reneg-hosts`` (never under a dot-folder: gradio refuses to serve files there).
2. Builds each host's own venv the way its users do (ComfyUI: ``requirements.txt``; A1111/Forge:
   ``requirements_versions.txt`` with the offline adjustments of ``shared/hosts/README.md``). All venvs share ONE
   torch install, ``<cache>/torchbase`` (``pip install torch==2.14.1 torchvision==0.29.1``), through a ``.pth``
   file pointing at its site-packages. A venv is reused while the hash of its inputs (host requirements, this
   pack's ``requirements.txt`` + ``install.py``, the recipe below) is unchanged and rebuilt otherwise; its
   ``.reneg-ok`` marker is written last, so a half-built venv is never taken as good.
3. Installs this pack the way each host does: ComfyUI-Manager (folder in ``custom_nodes/``,
   ``pip install -r requirements.txt``, then ``python install.py`` with ComfyUI's Python); A1111/Forge (folder in
   ``extensions/``, ``install.py`` run as ``launch_utils.run_extension_installer`` runs it: the host's Python, the
   webui root on ``PYTHONPATH`` so ``import launch`` works).
   The three host venvs are built at the same time (pip is mostly download- and unpack-bound); each one's
   command output goes to ``<cache>/logs/<host>.log`` (its tail is printed if it fails).
4. Writes ``<cache>/hosts.env`` (shell ``export`` lines) for ``.ci/run``: COMFYUI_PATH, COMFYUI_PYTHON, A1111_PATH,
   A1111_PYTHON, FORGE_PATH, FORGE_PYTHON, RENEG_E2E_CACHE, RENEG_CHROMIUM.

Any failure stops with a non-zero exit and the command that failed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
#: Bump to force every venv to be rebuilt when the recipe below changes.
RECIPE_VERSION = "1"
#: A1111/Forge pin setuptools==69.5.1 (that pin makes pip downgrade torch); pytorch_lightning 1.9.4 needs
#: pkg_resources, which setuptools 80.10.2 still has.
SETUPTOOLS = "setuptools==80.10.2"
#: A1111's launch would fetch CLIP as a GitHub zip; PyPI has the same package.
OPENAI_CLIP = "openai-clip==1.0.1"
#: Forge's launch would `git clone` lllyasviel/huggingface_guess into repositories/; PyPI has it.
HF_GUESS = "huggingface-guess==0.1.0"
PACK_FOLDER = {"comfyui": "ComfyUI-ReNeg", "a1111": "reneg", "forge": "reneg"}

HOSTS = {  # name: (archive, folder inside the archive)
    "comfyui": ("comfyui-0.3.64-a125cd8.tar.gz", "ComfyUI"),
    "a1111": ("a1111-v1.10.1.tar.gz", "a1111/stable-diffusion-webui"),
    "forge": ("forge-dfdcbab6.tar.xz", "forge/stable-diffusion-webui-forge"),
}


#: Per build thread: ``name`` (shown in log lines) and ``file`` (where its commands' output goes).
_job = threading.local()


def log(msg: str) -> None:
    name = getattr(_job, "name", "")
    print(f"[setup_hosts {time.strftime('%H:%M:%S')}{' ' + name if name else ''}] {msg}", flush=True)


def run(cmd: list[str], **kw) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    sink = getattr(_job, "file", None)
    if sink is not None:
        sink.write("$ " + " ".join(str(c) for c in cmd) + "\n")
        sink.flush()
        kw = {**kw, "stdout": sink, "stderr": subprocess.STDOUT}
    try:
        subprocess.run([str(c) for c in cmd], check=True, **kw)
    except subprocess.CalledProcessError as exc:
        tail = ""
        if sink is not None:
            sink.flush()
            tail = "\n" + "".join(Path(sink.name).read_text(errors="replace").splitlines(True)[-60:])
        raise SystemExit(f"[setup_hosts] FAILED ({exc.returncode}): {' '.join(str(c) for c in cmd)}"
                         f"{' (log: ' + sink.name + ')' if sink is not None else ''}{tail}") from None


def in_parallel(jobs: dict[str, Callable[[], Path]], logs: Path) -> dict[str, Path]:
    """Run ``{name: build}`` at once, each build's command output in ``logs/<name>.log``. The other builds finish
    (their venvs stay valid for the next run); then the first failure, in ``jobs`` order, stops the set-up."""
    logs.mkdir(parents=True, exist_ok=True)

    def job(name: str, build: Callable[[], Path]) -> Path:
        with open(logs / f"{name}.log", "w") as fh:
            _job.name, _job.file = name, fh
            return build()

    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = {name: pool.submit(job, name, build) for name, build in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(hosts_dir: Path) -> dict[str, str]:
    """{archive name: sha256} after checking every listed archive against SHA256SUMS."""
    sums = {}
    for line in (hosts_dir / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest
    for name, digest in sums.items():
        actual = sha256(hosts_dir / name)
        if actual != digest:
            raise SystemExit(f"[setup_hosts] {hosts_dir / name}: sha256 {actual} != SHA256SUMS {digest}")
    log(f"verified {len(sums)} snapshots in {hosts_dir}")
    return sums


def unpack(archive: Path, digest: str, inner: str, dest: Path) -> Path:
    """Unpack ``archive`` into ``dest`` once per digest (temp folder + rename); returns the host root."""
    stamp = dest / ".reneg-archive-sha256"
    root = dest / inner
    if stamp.is_file() and stamp.read_text().strip() == digest and root.is_dir():
        return root
    log(f"unpacking {archive.name} -> {dest}")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    stamp.write_text(digest + "\n")
    return root


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def site_packages(python: Path) -> str:
    return subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   text=True).strip()


def pip(python: Path, *args: str, cwd: Path | None = None) -> None:
    run([python, "-m", "pip", "install", "--no-input", *args], cwd=cwd)


def fresh_venv(venv: Path, inputs_hash: str) -> bool:
    """True when ``venv`` was fully built from the same inputs; otherwise removes it (to be rebuilt)."""
    marker = venv / ".reneg-ok"
    if marker.is_file() and marker.read_text().strip() == inputs_hash and venv_python(venv).exists():
        return True
    if venv.exists():
        log(f"{venv}: inputs changed or build incomplete; rebuilding")
        shutil.rmtree(venv)
    return False


def torchbase(cache: Path) -> str:
    """The shared torch install; returns its site-packages."""
    venv = cache / "torchbase"
    key = hashlib.sha256(" ".join(TORCH).encode()).hexdigest()
    if not fresh_venv(venv, key):
        t = time.time()
        run([sys.executable, "-m", "venv", venv])
        pip(venv_python(venv), *TORCH)
        (venv / ".reneg-ok").write_text(key + "\n")
        log(f"torchbase built in {time.time() - t:.0f} s")
    return site_packages(venv_python(venv))


def inputs_hash(*parts: bytes) -> str:
    h = hashlib.sha256(RECIPE_VERSION.encode())
    for part in parts + ((REPO / "requirements.txt").read_bytes(), (REPO / "install.py").read_bytes()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def new_venv(venv: Path, torch_site: str) -> Path:
    run([sys.executable, "-m", "venv", venv])
    python = venv_python(venv)
    Path(site_packages(python), "_reneg_torchbase.pth").write_text(torch_site + "\n")
    return python


def link_pack(folder: Path) -> Path:
    """``folder`` -> this checkout (re-pointed on every run: the cache outlives any one clone)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink() or folder.exists():
        if not folder.is_symlink():
            raise SystemExit(f"[setup_hosts] {folder} exists and is not a link this program made; remove it")
        folder.unlink()
    folder.symlink_to(REPO, target_is_directory=True)
    return folder


def webui_requirements(root: Path, extra: list[str]) -> str:
    """``requirements_versions.txt`` without its setuptools pin, plus ``extra`` (the README's offline recipe)."""
    lines = [ln for ln in (root / "requirements_versions.txt").read_text().splitlines()
             if not ln.strip().lower().startswith("setuptools")]
    return "\n".join(lines + extra) + "\n"


def run_extension_installer(python: Path, webui: Path, ext: Path) -> None:
    """What ``modules.launch_utils.run_extension_installer`` does, but failing loudly (it only logs errors)."""
    env = {**os.environ, "PYTHONPATH": f"{webui}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run([python, ext / "install.py"], cwd=webui, env=env)


def setup_comfyui(root: Path, cache: Path, torch_site: str) -> Path:
    reqs = root / "requirements.txt"
    venv = cache / "venvs" / "comfyui"
    key = inputs_hash(reqs.read_bytes())
    pack = link_pack(root / "custom_nodes" / PACK_FOLDER["comfyui"])
    python = venv_python(venv)
    if not fresh_venv(venv, key):
        t = time.time()
        python = new_venv(venv, torch_site)
        pip(python, "-r", reqs)
        # ComfyUI-Manager's install of a node pack: requirements.txt, then install.py, both with ComfyUI's Python
        pip(python, "-r", pack / "requirements.txt", cwd=pack)
        run([python, pack / "install.py"], cwd=pack)
        (venv / ".reneg-ok").write_text(key + "\n")
        log(f"comfyui venv built in {time.time() - t:.0f} s")
    return python


def setup_webui(name: str, root: Path, cache: Path, torch_site: str, extra: list[str]) -> Path:
    """A1111's or Forge's venv from its ``requirements_versions.txt`` (+ ``extra``), then the pack installed as
    ``run_extension_installer`` does (``extensions/`` + ``install.py``); rebuilt only when its inputs change."""
    reqs_text = webui_requirements(root, extra)
    venv = cache / "venvs" / name
    key = inputs_hash(reqs_text.encode())
    ext = link_pack(root / "extensions" / PACK_FOLDER[name])
    python = venv_python(venv)
    if not fresh_venv(venv, key):
        t = time.time()
        python = new_venv(venv, torch_site)
        reqs = venv / "requirements_reneg_ci.txt"
        reqs.write_text(reqs_text)
        pip(python, "-r", reqs)
        pip(python, SETUPTOOLS)
        run_extension_installer(python, root, ext)
        (venv / ".reneg-ok").write_text(key + "\n")
        log(f"{name} venv built in {time.time() - t:.0f} s")
    return python


def setup_a1111(root: Path, cache: Path, torch_site: str) -> Path:
    return setup_webui("a1111", root, cache, torch_site, [OPENAI_CLIP])


def forge_repositories(root: Path, a1111_root: Path, cache: Path) -> None:
    """The git clones Forge's launch would make (offline here): BLIP and the webui assets at the same commits as
    A1111's snapshot ships them; huggingface_guess from its PyPI wheel, laid out as the clone is."""
    repos = root / "repositories"
    for name in ("BLIP", "stable-diffusion-webui-assets"):
        if not (repos / name).is_dir():
            shutil.copytree(a1111_root / "repositories" / name, repos / name, symlinks=True)
    guess = repos / "huggingface_guess"
    if not (guess / "huggingface_guess" / "detection.py").is_file():
        wheels = cache / "wheels"
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", wheels, HF_GUESS])
        wheel = next(wheels.glob("huggingface_guess-*.whl"))
        tmp = guess.with_name(guess.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
        shutil.rmtree(guess, ignore_errors=True)
        tmp.rename(guess)


def setup_forge(root: Path, a1111_root: Path, cache: Path, torch_site: str) -> Path:
    forge_repositories(root, a1111_root, cache)
    return setup_webui("forge", root, cache, torch_site, [])


def write_env(path: Path, values: dict[str, str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"export {k}='{v}'\n" for k, v in values.items()))
    tmp.replace(path)
    log(f"wrote {path}:\n" + path.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "RENEG_HOSTS_CACHE") or Path.home() / "reneg-hosts"))
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--hosts", default="comfyui,a1111,forge")
    args = parser.parse_args(argv)
    cache = args.cache.resolve()
    if cache == REPO or REPO in cache.parents:
        raise SystemExit(f"[setup_hosts] the cache {cache} must be outside the repository {REPO}")
    hidden = [part for part in cache.parts if part.startswith(".")]
    if hidden:  # gradio (A1111/Forge) answers 403 for any file under a dot-folder: the webui's own JS would not load
        raise SystemExit(f"[setup_hosts] the cache {cache} is inside a hidden folder ({hidden[0]}); the webuis' "
                         "gradio refuses to serve files there (403), so their pages break. Choose a path without "
                         "dot-folders, e.g. RENEG_HOSTS_CACHE=$HOME/reneg-hosts.")
    hosts_dir = args.shared / "hosts"
    if not (hosts_dir / "SHA256SUMS").is_file():
        raise SystemExit(f"[setup_hosts] {hosts_dir}/SHA256SUMS not found: put ../shared beside the checkout "
                         "or pass --shared")
    wanted = [h.strip() for h in args.hosts.split(",") if h.strip()]
    cache.mkdir(parents=True, exist_ok=True)
    sums = verify(hosts_dir)
    roots = {name: unpack(hosts_dir / archive, sums[archive], inner, cache / "src" / name)
             for name, (archive, inner) in HOSTS.items() if name in wanted or (name == "a1111" and "forge" in wanted)}
    torch_site = torchbase(cache)
    env = {"RENEG_E2E_CACHE": str(cache / "e2e"), "RENEG_CHROMIUM": "/usr/bin/chromium"}
    (cache / "e2e").mkdir(exist_ok=True)
    builds = {"comfyui": lambda: setup_comfyui(roots["comfyui"], cache, torch_site),
              "a1111": lambda: setup_a1111(roots["a1111"], cache, torch_site),
              "forge": lambda: setup_forge(roots["forge"], roots["a1111"], cache, torch_site)}
    t = time.time()
    pythons = in_parallel({name: build for name, build in builds.items() if name in wanted}, cache / "logs")
    log(f"host venvs ready in {time.time() - t:.0f} s")
    for name, python in pythons.items():
        key = {"comfyui": "COMFYUI", "a1111": "A1111", "forge": "FORGE"}[name]
        env.update({f"{key}_PATH": str(roots[name]), f"{key}_PYTHON": str(python)})
    write_env(cache / "hosts.env", env)


if __name__ == "__main__":
    main()
