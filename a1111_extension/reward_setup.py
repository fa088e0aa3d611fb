"""Which reward models are installed for the webui, and what to tell users when one is missing (no webui import).

A reward is *installed* when every weights file/folder it needs is found, without downloading, in: the explicit
path from Settings → ReNeg, the reward folder (Settings → ReNeg, default ``models/ReNeg-rewards``), then
``$RENEG_REWARDS_DIR``, then the Hugging Face cache. A found file must also look loadable (a torch zip with
``data.pkl``, a legacy pickle, a ``.safetensors`` header, or a transformers folder with config and weights);
the full load happens when the run starts. Messages name the files and the webui's own settings.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..core.errors import MissingWeightsError, RenegError
from ..core.rewards import parse_reward_spec
from ..core.rewards.weights import REWARDS_DIR_ENV

#: Rewards a user picks from the dropdown (the test rewards ``tiny``/``synthetic`` are typed, not listed).
USER_REWARDS = ("hpsv2.1", "hpsv2", "pickscore", "aesthetic")
NO_WEIGHTS = ("synthetic", "tiny")
#: Settings → ReNeg labels of the explicit-path options, per reward.
SETTING_LABELS = {"hpsv2.1": "HPSv2.1 weights file", "hpsv2": "HPSv2 weights file",
                  "pickscore": "PickScore weights folder", "aesthetic": "Aesthetic predictor weights"}
FOLDER_SETTING = "Folder with reward weights"


@dataclass(frozen=True)
class Need:
    """One file (or transformers folder) a reward needs: its hub name and repository."""

    name: str
    repo: str
    is_dir: bool = False


NEEDS: dict[str, tuple[Need, ...]] = {
    "hpsv2.1": (Need("HPS_v2.1_compressed.pt", "xswu/HPSv2"),),
    "hpsv2": (Need("HPS_v2_compressed.pt", "xswu/HPSv2"),),
    "pickscore": (Need("PickScore_v1", "yuvalkirstain/PickScore_v1", True),),
    "aesthetic": (Need("sac+logos+ava1-l14-linearMSE.pth", "camenduru/improved-aesthetic-predictor"),
                  Need("clip-vit-large-patch14", "openai/clip-vit-large-patch14", True)),
}


def looks_loadable(path: Path) -> Optional[str]:
    """None if ``path`` has the structure of a weights file/folder, else what is wrong (cheap: headers only)."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            return f"{path} has no config.json (not a transformers model folder)"
        if not any((path / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
            return f"{path} has no model.safetensors or pytorch_model.bin"
        return None
    from ..core.rewards.weights import check_weights_file

    try:
        check_weights_file(path)  # empty, a web page, a Git-LFS pointer, random bytes, a pickle running code
    except RenegError as exc:
        return str(exc)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if path.suffix == ".safetensors":
                (n,) = struct.unpack("<Q", head)
                json.loads(fh.read(n))
                return None
    except (OSError, struct.error, ValueError) as exc:
        return f"{path} is not a readable weights file ({exc})"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("data.pkl") for n in z.namelist()):
                return None
        return f"{path} is a zip file but not a torch checkpoint (no data.pkl)"
    if head[:1] == b"\x80":  # legacy (pre-zip) torch pickle
        return None
    return f"{path} is not a torch checkpoint (neither a torch zip file nor a pickle)"


def _from_hf_cache(need: Need) -> Optional[Path]:
    try:
        if need.is_dir:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(need.repo, local_files_only=True))
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(need.repo, need.name)
        return Path(found) if isinstance(found, str) else None
    except Exception:  # noqa: BLE001 - not cached / hub library quirks: simply not found there
        return None


def find(need: Need, explicit: Optional[str], folders: Sequence[Path]) -> tuple[Optional[Path], Optional[str]]:
    """(path, None) when found and loadable-looking; (None, problem) when found but broken; (None, None) if absent."""
    candidates: list[Path] = []
    if explicit:
        p = Path(explicit).expanduser()
        candidates.append(p / need.name if p.is_dir() and not need.is_dir else p)
    candidates += [Path(f) / need.name for f in folders]
    for c in candidates:
        if c.exists():
            problem = looks_loadable(c)
            return (c, None) if problem is None else (None, problem)
    cached = _from_hf_cache(need)
    if cached is not None and cached.exists():
        problem = looks_loadable(cached)
        return (cached, None) if problem is None else (None, problem)
    return None, None


def search_folders(folder: Path) -> list[Path]:
    """The reward folder from the settings, then ``$RENEG_REWARDS_DIR`` if set."""
    out = [Path(folder)]
    env = os.environ.get(REWARDS_DIR_ENV)
    if env and Path(env).expanduser() != Path(folder):
        out.append(Path(env).expanduser())
    return out


def missing_message(reward: str, need: Need, folder: Path, problem: Optional[str]) -> str:
    what = "folder" if need.is_dir else "file"
    get = f"https://huggingface.co/{need.repo}" + ("" if need.is_dir else f" (file {need.name})")
    head = (f"The {reward} reward's {what} '{need.name}' is broken: {problem}." if problem
            else f"The {reward} reward is not installed: its {what} '{need.name}' was not found.")
    where = f"put it in {folder} (Settings → ReNeg → '{FOLDER_SETTING}')"
    if reward in SETTING_LABELS and need is NEEDS[reward][0]:
        where += f", or enter its path in Settings → ReNeg → '{SETTING_LABELS[reward]}'"
    return f"{head} Download it from {get}, {where}, then press the reward's refresh button (🔄)."


def resolve_spec(spec: str, explicit: Mapping[str, Optional[str]], folder: Path) -> dict[str, Path]:
    """``{reward: weights path}`` for a reward or mix; one :class:`MissingWeightsError` naming the first gap."""
    parts = parse_reward_spec(spec)
    folders = search_folders(folder)
    paths: dict[str, Path] = {}
    for name, _ in parts:
        if name in NO_WEIGHTS:
            continue
        for i, need in enumerate(NEEDS[name]):
            path, problem = find(need, explicit.get(name) if i == 0 else None, folders)
            if path is None:
                raise MissingWeightsError(missing_message(name, need, folder, problem))
            if i == 0:
                paths[name] = path
    return paths


def installed(explicit: Mapping[str, Optional[str]], folder: Path) -> list[str]:
    """The user rewards whose weights are all present (dropdown choices)."""
    out = []
    for name in USER_REWARDS:
        try:
            resolve_spec(name, explicit, folder)
        except RenegError:
            continue
        out.append(name)
    return out


def status_html(choices: Sequence[str], folder: Path) -> str:
    """Note under the reward dropdown: nothing installed -> where to put HPSv2.1; otherwise ''."""
    if choices:
        return ""
    import html

    return ("<p class='reneg-reward-note'>No reward model is installed, so refinement and training cannot run. "
            "For HPSv2.1 (the paper's reward) download HPS_v2.1_compressed.pt from https://huggingface.co/xswu/HPSv2 "
            f"and put it in {html.escape(str(folder))} (Settings → ReNeg → '{FOLDER_SETTING}'), or enter its path in "
            f"Settings → ReNeg → '{SETTING_LABELS['hpsv2.1']}'; then press the reward's refresh button (🔄).</p>")
