"""Which rewards the webui offers (installed = weights found and structurally loadable) and what it says when
one is missing — in the webui's terms (Settings → ReNeg, models/ReNeg-rewards), not the CLI's."""
from __future__ import annotations

import os

import pytest
import torch

from reneg.a1111_extension import reward_setup
from reneg.core.errors import MissingWeightsError, RenegError


@pytest.fixture(autouse=True)
def no_env_or_hub(monkeypatch, tmp_path):
    monkeypatch.delenv("RENEG_REWARDS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(reward_setup, "_from_hf_cache", lambda need: None)


def _hps(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    return path


def test_nothing_installed_names_the_file_and_the_settings(tmp_path):
    folder = tmp_path / "models" / "ReNeg-rewards"
    assert reward_setup.installed({}, folder) == []
    with pytest.raises(MissingWeightsError) as raised:
        reward_setup.resolve_spec("hpsv2.1", {}, folder)
    msg = str(raised.value)
    assert "HPS_v2.1_compressed.pt" in msg and str(folder) in msg and "https://huggingface.co/xswu/HPSv2" in msg
    assert "Settings → ReNeg → 'Folder with reward weights'" in msg and "'HPSv2.1 weights file'" in msg
    assert "RENEG_REWARDS_DIR" not in msg and "--reward-weights" not in msg  # no CLI terms
    note = reward_setup.status_html([], folder)
    assert "Settings → ReNeg" in note and "HPS_v2.1_compressed.pt" in note
    assert reward_setup.status_html(["hpsv2.1"], folder) == ""


def test_installed_from_folder_explicit_path_and_env(tmp_path, monkeypatch):
    folder = tmp_path / "rewards"
    _hps(folder / "HPS_v2.1_compressed.pt")
    assert reward_setup.installed({}, folder) == ["hpsv2.1"]
    assert reward_setup.resolve_spec("hpsv2.1", {}, folder) == {"hpsv2.1": folder / "HPS_v2.1_compressed.pt"}
    explicit = _hps(tmp_path / "elsewhere" / "my-hps2.pt")
    assert reward_setup.installed({"hpsv2": str(explicit)}, folder) == ["hpsv2.1", "hpsv2"]
    env = tmp_path / "env"
    _hps(env / "HPS_v2_compressed.pt")
    monkeypatch.setenv("RENEG_REWARDS_DIR", str(env))
    assert reward_setup.resolve_spec("hpsv2", {}, folder) == {"hpsv2": env / "HPS_v2_compressed.pt"}
    # mixes check each part; test rewards need no weights
    assert set(reward_setup.resolve_spec("hpsv2.1:1,synthetic:0.5", {}, folder)) == {"hpsv2.1"}
    with pytest.raises(MissingWeightsError, match="pickscore"):
        reward_setup.resolve_spec("hpsv2.1:1,pickscore:1", {}, folder)
    with pytest.raises(RenegError, match="Unknown reward"):
        reward_setup.resolve_spec("hps", {}, folder)


def test_broken_files_are_not_installed_and_say_why(tmp_path):
    folder = tmp_path / "rewards"
    folder.mkdir()
    (folder / "HPS_v2.1_compressed.pt").write_bytes(os.urandom(1000))  # e.g. a truncated/HTML download
    assert reward_setup.installed({}, folder) == []
    with pytest.raises(MissingWeightsError, match="broken.*not a torch checkpoint"):
        reward_setup.resolve_spec("hpsv2.1", {}, folder)
    pick = folder / "PickScore_v1"
    pick.mkdir()
    (pick / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match="no model.safetensors"):
        reward_setup.resolve_spec("pickscore", {}, folder)
    (pick / "model.safetensors").write_bytes(b"x")
    assert reward_setup.installed({}, folder) == ["pickscore"]


def test_aesthetic_needs_head_and_clip_folder(tmp_path):
    folder = tmp_path / "rewards"
    _hps(folder / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(MissingWeightsError, match="clip-vit-large-patch14"):
        reward_setup.resolve_spec("aesthetic", {}, folder)
    clip = folder / "clip-vit-large-patch14"
    clip.mkdir()
    (clip / "config.json").write_text("{}")
    (clip / "model.safetensors").write_bytes(b"x")
    assert reward_setup.installed({}, folder) == ["aesthetic"]


def test_safetensors_header_check(tmp_path):
    from safetensors.torch import save_file

    good = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(1)}, str(good))
    assert reward_setup.looks_loadable(good) is None
    bad = tmp_path / "b.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert "not a readable weights file" in reward_setup.looks_loadable(bad)
