"""Install what ReNeg needs, only what is missing, in each of its three settings.

* **A1111 / Forge** run this file at launch (webui root on ``PYTHONPATH``): packages go through
  ``launch.is_installed`` / ``launch.run_pip``; torch is never touched (the webui owns it).
* **ComfyUI-Manager** runs it with ComfyUI's Python: missing packages are pip-installed into that Python.
* **By hand** (standalone CLI): ``python3 install.py --venv [--dev]`` creates/uses ``.venv/`` in this folder,
  installs torch + torchvision there if absent (unpinned), the requirements, and the pack itself (editable) so the
  ``reneg`` command exists. ``--dev`` adds the test requirements.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"


def _requirements(*files: str) -> list[str]:
    reqs: list[str] = []
    for name in files:
        for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                reqs.append(line)
    return reqs


def _missing(reqs: list[str]) -> list[str]:
    """Requirements whose distribution is absent or whose installed version does not satisfy the spec."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:  # packaging ships with pip/setuptools nearly everywhere; fall back to names only
        Requirement = None
    out = []
    for spec in reqs:
        name = Requirement(spec).name if Requirement else spec.split(">")[0].split("=")[0].split("<")[0].strip()
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(spec)
            continue
        if Requirement and version not in Requirement(spec).specifier:
            out.append(spec)
    return out


def _pip(args: list[str], python: str = sys.executable) -> None:
    cmd = [python, "-m", "pip", "install", *args]
    print("[ReNeg] " + " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def install_into_host() -> None:
    """A1111/Forge (via ``launch``) or ComfyUI/plain Python: install missing requirements only."""
    missing = _missing(_requirements("requirements.txt"))
    if not missing:
        return
    try:
        import launch  # A1111 / Forge
    except ImportError:
        launch = None
    if launch is not None and hasattr(launch, "run_pip"):
        for spec in missing:
            launch.run_pip(f'install "{spec}"', f"ReNeg requirement: {spec}")
    else:
        _pip(missing)


def setup_venv(dev: bool) -> None:
    """Create/refresh ``.venv`` with torch, the requirements and the pack (editable)."""
    python = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        print(f"[ReNeg] creating {VENV}", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    subprocess.check_call([str(python), str(Path(__file__)), "--inside-venv"] + (["--dev"] if dev else []))


def install_inside_venv(dev: bool) -> None:
    wanted = _requirements("requirements.txt") + (_requirements("requirements-dev.txt") if dev else [])
    if _missing(["torch", "torchvision"]):
        _pip(["torch", "torchvision"])
    missing = _missing(wanted)
    if missing:
        _pip(missing)
    no_deps = _missing(_requirements("requirements-dev-nodeps.txt")) if dev else []
    if no_deps:
        _pip(["--no-deps", *no_deps])
    try:
        from importlib import metadata

        metadata.version("reneg")
    except Exception:
        _pip(["--no-deps", "-e", str(ROOT)])
    print(f"[ReNeg] ready: {VENV / 'bin' / 'reneg'}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", action="store_true", help="standalone: create/use .venv/ in the repo root")
    parser.add_argument("--dev", action="store_true", help="also install the test requirements")
    parser.add_argument("--inside-venv", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside_venv:
        install_inside_venv(args.dev)
    elif args.venv:
        setup_venv(args.dev)
    else:
        install_into_host()


if __name__ == "__main__":
    main()
