"""ComfyUI pack logic that needs no ComfyUI: conditioning packing, strength, file lists/names, progress/interrupt,
and the package root staying ComfyUI-free outside ComfyUI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from reneg.comfy_nodes import conditioning as cond
from reneg.comfy_nodes import files
from reneg.comfy_nodes.progress import Reporter, bchw_to_comfy_image, tensor_to_pil
from reneg.core.errors import RenegError

REPO = Path(__file__).resolve().parent.parent


# --- conditioning -------------------------------------------------------------------------------------------
def test_pack_is_comfy_conditioning_and_round_trips_bit_exact():
    t = torch.randn(1, 77, 768)
    c = cond.pack(t)
    assert isinstance(c, list) and len(c) == 1 and isinstance(c[0][1], dict)
    assert torch.equal(c[0][0], t)
    assert c[0][1]["pooled_output"].shape == (1, 768)
    (back,) = cond.row_tensors(c, "x")
    assert torch.equal(back, t) and back.data_ptr() != t.data_ptr()


def test_row_tensors_splits_a_batch_in_row_order():
    t = torch.randn(3, 77, 768)
    rows = cond.row_tensors(cond.pack(t), "x")
    assert [r.shape for r in rows] == [(1, 77, 768)] * 3
    assert all(torch.equal(r[0], t[i]) for i, r in enumerate(rows))


def test_pack_keeps_given_pooled_and_rejects_2d():
    pooled = torch.randn(1, 768)
    assert torch.equal(cond.pack(torch.zeros(1, 77, 768), pooled)[0][1]["pooled_output"], pooled)
    with pytest.raises(RenegError, match="batch, tokens, dim"):
        cond.pack(torch.zeros(77, 768))


def test_row_tensors_give_autograd_capable_clones_of_inference_tensors():
    with torch.inference_mode():
        c = [[torch.randn(1, 77, 768), {}]]
    (t,) = cond.row_tensors(c, "negative")
    assert not t.is_inference()
    t.requires_grad_(True)
    (t * 2).sum().backward()
    assert torch.equal(t.grad, torch.full_like(t, 2.0))


@pytest.mark.parametrize("bad, msg", [
    ([], "expected a CONDITIONING"),
    ("text", "expected a CONDITIONING"),
    ([[torch.zeros(1, 77, 768), {}], [torch.zeros(1, 77, 768), {}]], "2 conditioning entries"),
    ([[torch.zeros(77, 768), {}]], r"\[rows, tokens, dim\]"),
    ([[torch.zeros(0, 77, 768), {}]], r"\[rows, tokens, dim\]"),
    ([["not a tensor", {}]], "malformed"),
])
def test_row_tensors_errors_name_the_problem(bad, msg):
    with pytest.raises(RenegError, match=msg):
        cond.row_tensors(bad, "negative")


def test_pooled_of():
    p = torch.randn(1, 768)
    assert torch.equal(cond.pooled_of([[torch.zeros(1, 77, 768), {"pooled_output": p}]]), p)
    assert cond.pooled_of([[torch.zeros(1, 77, 768), {}]]) is None
    assert cond.pooled_of([]) is None


def test_strength_lerp_endpoints_and_midpoint():
    emb, null = torch.randn(1, 77, 768), torch.randn(1, 77, 768)
    assert cond.apply_strength(emb, None, 1.0) is emb  # bit-exact, no CLIP needed
    assert torch.equal(cond.apply_strength(emb, null, 0.0), null)
    torch.testing.assert_close(cond.apply_strength(emb, null, 0.5), (emb + null) / 2)
    torch.testing.assert_close(cond.apply_strength(emb, null, 2.0), null + 2 * (emb - null))


def test_strength_needs_matching_clip():
    emb = torch.randn(1, 77, 768)
    with pytest.raises(RenegError, match="connect the CLIP"):
        cond.apply_strength(emb, None, 0.5)
    with pytest.raises(RenegError, match="does not belong to this model family"):
        cond.apply_strength(emb, torch.randn(1, 77, 1024), 0.5)


def test_fit_tokens():
    t = torch.randn(1, 154, 768)
    assert torch.equal(cond.fit_tokens(t, 77, "p"), t[:, :77])
    assert cond.fit_tokens(t[:, :77], 77, "p").shape == (1, 77, 768)
    with pytest.raises(RenegError, match="cannot be matched"):
        cond.fit_tokens(torch.randn(1, 50, 768), 77, "p")


# --- files ----------------------------------------------------------------------------------------------------
def released_registry():
    from reneg.core.released import released_embeddings

    return {e.filename: e for e in released_embeddings().values()}


def test_embedding_choices_merge_found_and_usable_released():
    found = ["mine_00001.safetensors", "sd1.5_reneg_emb.bin", "sub/B.safetensors", "pixart-alpha_reneg_emb.bin"]
    assert files.embedding_choices(found, released_registry()) == [
        "mine_00001.safetensors", "pixart-alpha_reneg_emb.bin", "sd1.4_reneg_emb.bin", "sd1.5_reneg_emb.bin",
        "sd2.1_reneg_emb.bin", "sub/B.safetensors"]  # PixArt-α's file: offered (ComfyUI's PixArt MODEL uses it)
    other = {**released_registry(), "xl.bin": SimpleNamespace(family="sdxl", base_model="SDXL", shape=(1, 77, 2048))}
    assert "xl.bin" not in files.embedding_choices(found + ["xl.bin"], other)  # a family no node can use


def test_released_for_width_names_the_files_of_a_family():
    reg = released_registry()
    assert files.released_for_width(reg, 768) == ["sd1.4_reneg_emb.bin", "sd1.5_reneg_emb.bin"]
    assert files.released_for_width(reg, 1024) == ["sd2.1_reneg_emb.bin"]
    assert files.released_for_width(reg, 4096) == ["pixart-alpha_reneg_emb.bin"]


def test_embedding_problem_is_the_queue_time_check(tmp_path):
    reg = released_registry()
    local = {"mine.safetensors"}
    find = lambda name: name if name in local else None  # noqa: E731
    assert files.embedding_problem("mine.safetensors", reg, find, [tmp_path]) is None
    assert files.embedding_problem("sd2.1_reneg_emb.bin", reg, find, [tmp_path]) is None  # downloaded on use
    missing = files.embedding_problem("gone.safetensors", reg, find, [tmp_path])
    assert "'gone.safetensors' not found" in missing and "models/reneg/" in missing and "press R" in missing
    assert files.embedding_problem("pixart-alpha_reneg_emb.bin", reg, find, [tmp_path]) is None
    reg["xl.bin"] = SimpleNamespace(family="sdxl", base_model="SDXL", shape=(1, 77, 2048))
    other = files.embedding_problem("xl.bin", reg, find, [tmp_path])
    assert "another kind of model" in other and "sd1.5_reneg_emb.bin" in other
    assert "Invalid embedding name" in files.embedding_problem("../x.bin", reg, find, [tmp_path])


@pytest.mark.parametrize("name", ["../x", "/abs/x", "a/../../x", "", "  ", "C:/x", "..\\x"])
def test_check_relative_name_refuses_escapes(name):
    with pytest.raises(RenegError, match="Invalid"):
        files.check_relative_name(name)


def test_check_relative_name_normalises():
    assert files.check_relative_name(" sub\\dir//neg ") == "sub/dir/neg"
    assert files.with_suffix("neg") == "neg.safetensors"
    assert files.with_suffix("neg.safetensors") == "neg.safetensors"


def test_next_free_path_counts_like_comfyui(tmp_path):
    assert files.next_free_path(tmp_path, "neg").name == "neg_00001.safetensors"
    (tmp_path / "neg_00001.safetensors").write_bytes(b"")
    (tmp_path / "neg_00007.safetensors").write_bytes(b"")
    (tmp_path / "negative_00009.safetensors").write_bytes(b"")  # other prefix: ignored
    assert files.next_free_path(tmp_path, "neg").name == "neg_00008.safetensors"
    sub = files.next_free_path(tmp_path, "runs/a")
    assert sub == tmp_path / "runs" / "a_00001.safetensors"


def test_reward_weight_choices_lists_files_and_model_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "PickScore_v1").mkdir(parents=True)
    (a / "PickScore_v1" / "config.json").write_text("{}")
    (a / "PickScore_v1" / "model.safetensors").write_bytes(b"")
    (a / "HPS_v2.1_compressed.pt").write_bytes(b"")
    (a / "notes.txt").write_text("x")
    b.mkdir()
    (b / "aesthetic.pth").write_bytes(b"")
    got = files.reward_weight_choices([a, b, tmp_path / "missing"])
    assert got == ["auto", "aesthetic.pth", "HPS_v2.1_compressed.pt", "PickScore_v1/"]
    assert files.resolve_in([a, b], "PickScore_v1/") == a / "PickScore_v1"
    assert files.resolve_in([a, b], "aesthetic.pth") == b / "aesthetic.pth"
    assert files.resolve_in([a, b], "nope.pt") is None


class _FakeFolderPaths:
    """The two folder_paths functions/attributes register_folders uses, with ComfyUI's semantics."""

    def __init__(self, models_dir):
        self.models_dir = str(models_dir)
        self.folder_names_and_paths = {"reneg": (["/extra/from/yaml"], set())}  # extra_model_paths.yaml ran first

    def add_model_folder_path(self, name, path, is_default=False):
        paths, _ = self.folder_names_and_paths.setdefault(name, ([], set()))
        if path in paths:
            return
        paths.insert(0, path) if is_default else paths.append(path)


def test_register_folders_keeps_yaml_paths_and_sets_extensions(tmp_path):
    fp = _FakeFolderPaths(tmp_path / "models")
    files.register_folders(fp, tmp_path / "pack" / "embeddings")
    paths, exts = fp.folder_names_and_paths["reneg"]
    assert paths == [str(tmp_path / "models" / "reneg"), "/extra/from/yaml", str(tmp_path / "pack" / "embeddings")]
    assert exts == {".safetensors", ".bin", ".pt", ".pth"}
    assert fp.folder_names_and_paths["reneg_rewards"][0] == [str(tmp_path / "models" / "reneg_rewards")]
    assert "embeddings" not in fp.folder_names_and_paths  # never textual-inversion's folder


# --- progress / interrupt -------------------------------------------------------------------------------------
class _Interrupt(Exception):
    pass


class _Host:
    """A fake ComfyUI: the progress hook raises and clears the flag when interrupted, like main.py's hook."""

    def __init__(self):
        self.flag = False
        self.updates = []

    def update(self, value, total, preview):
        if self.flag:
            self.flag = False
            raise _Interrupt()
        self.updates.append((value, total, preview))

    def raise_interrupt(self):
        if self.flag:
            self.flag = False
            raise _Interrupt()

    def reporter(self, total):
        return Reporter(total=total, update=self.update, interrupted=lambda: self.flag,
                        rearm=lambda: setattr(self, "flag", True), raise_interrupt=self.raise_interrupt,
                        interrupt_type=_Interrupt)


def test_reporter_updates_with_preview():
    host = _Host()
    r = host.reporter(3)
    r.step(1)
    r.step(5, torch.rand(1, 3, 16, 8))
    assert host.updates[0] == (1, 3, None)
    value, total, (fmt, img, size) = host.updates[1]
    assert (value, total, fmt, img.size, size) == (3, 3, "JPEG", (8, 16), 512)
    assert not r.should_stop()
    r.raise_if_interrupted()  # no interrupt: no exception


def test_interrupt_consumed_by_progress_hook_is_rearmed_then_raised():
    host = _Host()
    r = host.reporter(10)

    def racing_update(value, total, preview):
        host.flag = True  # the user clicks Cancel right now ...
        host.update(value, total, preview)  # ... and ComfyUI's hook raises and clears the flag

    r.update = racing_update
    r.step(2)  # must not raise: the engine has to see the interrupt and save first
    assert host.flag and r.should_stop()
    with pytest.raises(_Interrupt):
        r.raise_if_interrupted()
    assert not host.flag


def test_reporter_skips_bar_when_interrupted_so_engine_sees_the_flag():
    host = _Host()
    r = host.reporter(4)
    host.flag = True
    r.step(1)
    assert host.flag and host.updates == [] and r.should_stop()


def test_image_conversions():
    x = torch.rand(2, 3, 5, 7)
    img = bchw_to_comfy_image(x)
    assert img.shape == (2, 5, 7, 3) and torch.equal(img[1, 2, 3], x[1, :, 2, 3])
    assert tensor_to_pil(x).size == (7, 5)


# --- package root -------------------------------------------------------------------------------------------
def test_package_import_outside_comfyui_loads_nothing_from_comfy_or_heavy():
    code = ("import sys, reneg; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('comfy', 'comfy_api', 'folder_paths', 'torch', 'diffusers', 'transformers')]; "
            "print(hasattr(reneg, 'comfy_entrypoint'), bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO.parent)
    assert out.stdout.strip() == "False []"


# --- Load ReNeg Reward node logic (core.rewards only, no ComfyUI) -------------------------------------------------
def test_node_reward_is_differentiable_even_when_built_inside_inference_mode():
    from reneg.comfy_nodes.reward_run import build_node_reward

    with torch.inference_mode():  # ComfyUI runs every node like this
        reward = build_node_reward("tiny", files.AUTO_WEIGHTS, "", [])
    images = torch.rand(1, 3, 64, 64, requires_grad=True)
    reward.score(images, ["a cat"]).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_node_reward_weight_errors(tmp_path):
    from reneg.comfy_nodes.reward_run import build_node_reward

    with pytest.raises(RenegError, match="not found"):
        build_node_reward("hpsv2.1", "HPS_v2.1_compressed.pt", "", [tmp_path])
    with pytest.raises(RenegError, match="mix finds its weights itself"):
        build_node_reward("hpsv2.1", "x.pt", "hpsv2.1:1,aesthetic:0.5", [tmp_path])
