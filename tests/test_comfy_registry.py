"""Comfy Registry metadata (issue 3g): pyproject's license/dependencies/Icon and what `comfy node pack` ships.

`comfy node pack` zips the git-tracked files minus the `.comfyignore` patterns (gitwildmatch, as .gitignore);
`git ls-files -i -c --exclude-from=.comfyignore` applies the same rules to the same file list.
"""
from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_license_is_a_file_reference_to_the_mit_license():
    assert PYPROJECT["project"]["license"] == {"file": "LICENSE"}
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text


def test_dependencies_never_include_torch():
    """A registry/Manager install must not replace the host's torch build."""
    names = [d.split(";")[0].split("[")[0].strip() for d in PYPROJECT["project"]["dependencies"]]
    names = [n.split(">")[0].split("<")[0].split("=")[0].split("!")[0].split("~")[0].strip().lower() for n in names]
    assert not {"torch", "torchvision", "torchaudio"} & set(names), names
    requirements = [line.split("#")[0].strip().lower() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert not [r for r in requirements if r.startswith(("torch>", "torch=", "torch<")) or r == "torch"]


def test_icon_is_a_small_square_image_in_the_repository():
    comfy = PYPROJECT["tool"]["comfy"]
    icon = comfy["Icon"]
    repo = PYPROJECT["project"]["urls"]["Repository"]
    owner_repo = urlparse(repo).path.strip("/")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    assert icon.startswith(prefix), (icon, prefix)
    path = REPO / icon[len(prefix):]
    assert path.is_file(), f"Icon points at {path}, which is not in the repository"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width == im.height and 64 <= im.width <= 400, (im.format, im.size)
    assert path.stat().st_size < 50_000
    assert comfy["DisplayName"] and comfy["PublisherId"]


def _tracked_and_ignored() -> tuple[list[str], set[str]]:
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, text=True, check=True)
    ignored = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-i", "-c", "--exclude-from=.comfyignore"],
                             capture_output=True, text=True, check=True)
    return [f for f in tracked.stdout.split("\0") if f], {f for f in ignored.stdout.split("\0") if f}


def test_comfy_node_pack_ships_no_tests_ci_or_benchmarks():
    assert (REPO / ".comfyignore").is_file()
    tracked, ignored = _tracked_and_ignored()
    shipped = [f for f in tracked if f not in ignored]
    assert not [f for f in shipped if f.startswith(("tests/", ".ci/", "benchmarks/"))], shipped
    assert not [f for f in shipped if f.startswith("requirements-dev")]
    for needed in ("__init__.py", "pyproject.toml", "requirements.txt", "install.py", "LICENSE",
                   "comfy_nodes/nodes.py", "core/train.py", "embeddings/registry.json"):
        assert needed in shipped, f"{needed} would be left out of the registry archive"
    assert any(f.startswith("example_workflows/") and f.endswith(".json") for f in shipped)
    assert any(f.startswith("example_workflows/") and f.endswith(".jpg") for f in shipped)
