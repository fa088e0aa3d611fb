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
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
#: Where host mode remembers the version note it printed (shown again only when the versions change).
NOTE_FILE = ROOT / ".install-note.txt"
#: What needs the version requirements.txt asks for, when a host keeps an older one (A1111 v1.10 pins
#: transformers 4.30.2, open_clip_torch 2.20.0, accelerate 0.21.0; upgrading transformers breaks that webui).
FEATURE_NEEDS = {
    "transformers": "only the standalone CLI's diffusers pipelines (`reneg ... --model <folder|hub id>`); "
                    "nothing inside the webui needs it — do not upgrade it there, the webui depends on its pin",
    "open_clip_torch": "the PickScore reward and the test reward 'tiny'; HPSv2.1, HPSv2 and aesthetic work "
                       "with the older version",
    "accelerate": "only multi-GPU training with `accelerate launch -m reneg train` (standalone CLI); nothing "
                  "inside the webui or ComfyUI",
}


def _requirements(*files: str) -> list[str]:
    reqs: list[str] = []
    for name in files:
        for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                reqs.append(line)
    return reqs


def _dist_name(spec: str) -> str:
    try:
        from packaging.requirements import Requirement

        return Requirement(spec).name
    except ImportError:  # packaging ships with pip/setuptools nearly everywhere
        return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _satisfied(spec: str, version: str) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return True
    return Requirement(spec).specifier.contains(version, prereleases=True)


def _missing(reqs: list[str]) -> list[str]:
    """Requirements whose distribution is absent or whose installed version does not satisfy the spec."""
    out = []
    for spec in reqs:
        version = _installed_version(_dist_name(spec))
        if version is None or not _satisfied(spec, version):
            out.append(spec)
    return out


def _pip(args: list[str], python: str = sys.executable) -> None:
    cmd = [python, "-m", "pip", "install", *args]
    print("[ReNeg] " + " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def _freeze_constraints(skip: set[str]) -> str:
    """A pip constraints file pinning every installed distribution (except ``skip``) to its current version."""
    from importlib import metadata

    seen: dict[str, str] = {}
    for d in metadata.distributions():  # in sys.path order: the first of a name is the one Python imports
        name = d.metadata["Name"]
        if name and _canon(name) not in skip and _canon(name) not in seen:
            seen[_canon(name)] = f"{name}=={d.version}"
    pins = sorted(seen.values())
    fd, path = tempfile.mkstemp(prefix="reneg-host-constraints-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(pins) + "\n")
    return path


def version_note(older: list[tuple[str, str]]) -> str:
    """What the host's older packages mean for ReNeg, package by package ('' when nothing is older)."""
    if not older:
        return ""
    lines = ["[ReNeg] This Python keeps its own versions of some packages (ReNeg never changes them):"]
    for spec, version in older:
        name = _dist_name(spec)
        need = FEATURE_NEEDS.get(name, "some ReNeg features")
        lines.append(f"  - {name}=={version} (ReNeg's {spec} is for {need})")
    return "\n".join(lines)


def _note_once(note: str) -> None:
    """Print ``note`` unless this exact note was printed before (remembered in :data:`NOTE_FILE`)."""
    try:
        if not note or (NOTE_FILE.is_file() and NOTE_FILE.read_text(encoding="utf-8") == note):
            return
    except OSError:
        pass
    print(note, flush=True)
    try:
        NOTE_FILE.write_text(note, encoding="utf-8")
    except OSError:  # read-only extension folder: the note is printed again next time, nothing worse
        pass


def install_into_host() -> None:
    """A1111/Forge (via ``launch``) or ComfyUI/plain Python: install absent requirements only.

    The host's installed packages are never upgraded or downgraded: pip runs with a constraints file pinning all
    of them, so it picks versions of the absent packages that fit the host (e.g. an older diffusers for A1111's
    huggingface_hub), or fails with a message naming what to do.
    """
    reqs = _requirements("requirements.txt")
    absent = [s for s in reqs if _installed_version(_dist_name(s)) is None]
    older = [(spec, _installed_version(_dist_name(spec))) for spec in reqs]
    _note_once(version_note([(s, v) for s, v in older if v is not None and not _satisfied(s, v)]))
    if not absent:
        return
    constraints = _freeze_constraints({_canon(_dist_name(s)) for s in absent})
    try:
        try:
            import launch  # A1111 / Forge
        except ImportError:
            launch = None
        if launch is not None and hasattr(launch, "run_pip"):
            quoted = " ".join(f'"{s}"' for s in absent)
            launch.run_pip(f'install -c "{constraints}" {quoted}', f"ReNeg requirements: {', '.join(absent)}")
        else:
            _pip(["-c", constraints, *absent])
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        raise SystemExit(f"[ReNeg] could not install {', '.join(absent)} without changing the host's packages "
                         f"({exc}). Install them by hand into the host's Python, e.g. "
                         f"`python -m pip install {' '.join(absent)}`.") from exc
    finally:
        os.unlink(constraints)


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
