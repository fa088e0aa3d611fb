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
def installer(tmp_path):
    spec = importlib.util.spec_from_file_location("reneg_install_under_test", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.NOTE_FILE = tmp_path / "install-note.txt"  # never the checkout's own
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
    assert "transformers==4.30.2" in out and "upgrade it yourself" not in out
    assert not list(Path(__import__("tempfile").gettempdir()).glob("reneg-host-constraints-*"))


def test_host_mode_does_nothing_when_all_present(installer, monkeypatch):
    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(
        run_pip=lambda *a: pytest.fail("pip must not run")))
    monkeypatch.setattr(installer, "_installed_version", lambda name: "999")
    installer.install_into_host()


def test_requirements_never_pin_torch(installer):
    names = {installer._canon(installer._dist_name(s)) for s in installer._requirements("requirements.txt")}
    assert names.isdisjoint({"torch", "torchvision", "torchaudio"})


A1111_HOST = {"transformers": "4.30.2", "open_clip_torch": "2.20.0", "accelerate": "0.21.0", "diffusers": "0.37.1",
              "safetensors": "0.4.2", "huggingface_hub": "0.36.2", "tqdm": "4.66.0", "matplotlib": "3.8.0",
              "Pillow": "9.5.0", "ftfy": "6.1.1", "regex": "2023.1.1"}


def test_older_host_packages_are_explained_once_per_feature(installer, monkeypatch, capsys):
    """A1111 v1.10 keeps transformers 4.30.2 etc.: say once which ReNeg feature needs the newer version — and
    never tell users to upgrade transformers, which breaks that webui."""
    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(
        run_pip=lambda *a: pytest.fail("pip must not run")))
    monkeypatch.setattr(installer, "_installed_version", lambda name: A1111_HOST.get(name))
    installer.install_into_host()
    out = capsys.readouterr().out
    assert "upgrade it yourself" not in out.lower()
    lines = {name: next(l for l in out.splitlines() if f"{name}==" in l)
             for name in ("transformers", "open_clip_torch", "accelerate")}
    assert "do not upgrade" in lines["transformers"] and "CLI" in lines["transformers"]
    assert "PickScore" in lines["open_clip_torch"] and "HPSv2.1" in lines["open_clip_torch"]
    assert "multi-GPU" in lines["accelerate"]
    installer.install_into_host()  # the next launch: silent
    assert capsys.readouterr().out == ""
    A1111_HOST_NEW = {**A1111_HOST, "accelerate": "0.25.0"}  # the host changed: explained again
    monkeypatch.setattr(installer, "_installed_version", lambda name: A1111_HOST_NEW.get(name))
    installer.install_into_host()
    assert "accelerate==0.25.0" in capsys.readouterr().out


def test_constraints_pin_the_version_python_imports_when_a_name_is_installed_twice(installer, monkeypatch):
    """A venv over a shared base (a .pth to another site-packages, --system-site-packages) can see numpy twice;
    pinning both versions made pip's resolution impossible (seen with A1111's venv)."""
    from importlib import metadata

    def dist(name, version):
        return types.SimpleNamespace(metadata={"Name": name}, version=version)

    monkeypatch.setattr(metadata, "distributions",
                        lambda: iter([dist("numpy", "1.26.2"), dist("torch", "2.14.1"), dist("numpy", "2.4.6")]))
    path = Path(installer._freeze_constraints(set()))
    try:
        assert path.read_text().split() == ["numpy==1.26.2", "torch==2.14.1"]
    finally:
        path.unlink()
