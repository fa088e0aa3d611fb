"""install.py in host mode: installs only absent packages, never moves the host's own pins."""
from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def installer():
    spec = importlib.util.spec_from_file_location("reneg_install_under_test", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_host_mode_installs_only_absent_packages_pinned_to_the_host(installer, monkeypatch, capsys):
    calls = []

    def run_pip(args, desc):
        constraints = re.search(r'-c "([^"]+)"', args).group(1)
        calls.append((args, Path(constraints).read_text()))

    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(run_pip=run_pip))
    host = {"transformers": "4.30.2", "safetensors": "0.4.2", "tqdm": "4.66.0", "matplotlib": "3.8.0",
            "Pillow": "9.5.0", "open_clip_torch": "2.20.0", "accelerate": "0.21.0", "huggingface_hub": "0.36.2",
            "ftfy": "6.1.1", "regex": "2023.1.1"}
    monkeypatch.setattr(installer, "_installed_version", lambda name: host.get(name))
    installer.install_into_host()
    assert len(calls) == 1
    args, constraints = calls[0]
    assert '"diffusers>=0.30"' in args and "transformers" not in args
    pins = constraints.splitlines()
    assert any(p.startswith("torch==") for p in pins)          # the host's torch can't move
    assert not any(p.lower().startswith("diffusers==") for p in pins)
    out = capsys.readouterr().out
    assert "keeping the host's transformers==4.30.2" in out
    assert not list(Path(__import__("tempfile").gettempdir()).glob("reneg-host-constraints-*"))


def test_host_mode_does_nothing_when_all_present(installer, monkeypatch):
    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(
        run_pip=lambda *a: pytest.fail("pip must not run")))
    monkeypatch.setattr(installer, "_installed_version", lambda name: "999")
    installer.install_into_host()


def test_requirements_never_pin_torch(installer):
    names = {installer._canon(installer._dist_name(s)) for s in installer._requirements("requirements.txt")}
    assert names.isdisjoint({"torch", "torchvision", "torchaudio"})


def test_constraints_pin_the_copy_python_imports_when_a_package_is_shadowed(installer, tmp_path, monkeypatch):
    """A venv over a shared base (``.pth``/--system-site-packages) can hold two versions of one package; only the
    first on sys.path is pinned (two pins would make every pip install impossible)."""
    for folder, version in (("venv", "1.26.2"), ("base", "2.4.6")):
        info = tmp_path / folder / f"reneg_dupe_pkg-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: reneg_dupe_pkg\nVersion: {version}\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "venv"), str(tmp_path / "base"), *sys.path])
    path = installer._freeze_constraints(set())
    try:
        pins = [p for p in Path(path).read_text().splitlines() if p.lower().startswith("reneg_dupe_pkg")]
    finally:
        Path(path).unlink()
    assert pins == ["reneg_dupe_pkg==1.26.2"]
