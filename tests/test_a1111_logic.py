"""Webui-independent parts of the A1111 script and tab: embedding discovery, script args, infotext/paste,
per-prompt batching, output naming, live-view images."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reneg.a1111_extension import library
from reneg.a1111_extension.script_logic import (KEY_NAME, KEY_REFINE_SKIPPED, KEY_REFINE_STEPS, KEY_REFINED,
                                                KEY_REWARD, KEY_STRENGTH, NO_EMBEDDING, ScriptArgs, apply_overrides,
                                                args_from_infotext, infotext_params, refine_key,
                                                refine_params, summarize_refinement)
from reneg.a1111_extension.train_logic import compose, curve_image, output_path, parse_prompts, tensor_to_pil
from reneg.core.embedding_io import save_embedding
from reneg.core.errors import RenegError

def _write(path: Path, dim=768, seed=0) -> Path:
    g = torch.Generator().manual_seed(seed)
    return save_embedding(path, torch.randn(1, 77, dim, generator=g), overwrite=True)  # tests re-write files


def test_list_and_resolve_embeddings(tmp_path):
    user, pack = tmp_path / "models" / "ReNeg", tmp_path / "pack"
    _write(user / "mine.safetensors")
    _write(user / "refined" / "cat-0123.safetensors", seed=1)
    _write(pack / "mine.safetensors", seed=2)  # same name in the later folder: the user's wins
    _write(pack / "other.safetensors", seed=3)
    (pack / "registry.json").write_text("{}")
    (pack / ".hidden.safetensors").write_bytes(b"")
    dirs = [user, pack, tmp_path / "missing"]
    files = library.list_embeddings(dirs)
    assert list(files) == ["mine", "refined/cat-0123", "other"]
    assert files["mine"].path.parent == user
    assert library.resolve("mine", dirs).path == user / "mine.safetensors"
    assert library.resolve("other.safetensors", dirs).name == "other"
    assert library.resolve("cat-0123", dirs).name == "refined/cat-0123"  # unique bare stem
    with pytest.raises(RenegError, match="not found.*models/ReNeg"):
        library.resolve("nope", dirs)
    with pytest.raises(RenegError, match="No negative embedding selected"):
        library.resolve("", dirs)


def test_released_files_load_through_the_cache(released_dir):
    files = library.list_embeddings([released_dir])
    assert {"sd1.5_reneg_emb", "sd2.1_reneg_emb"} <= set(files)
    cache = library.EmbeddingCache()
    emb, h = cache.load(files["sd1.5_reneg_emb"].path)
    assert emb.tensor.shape == (1, 77, 768) and emb.tensor.dtype == torch.float32 and len(h) == 10
    assert cache.load(files["sd1.5_reneg_emb"].path)[0] is emb  # cached
    assert cache.load(files["sd2.1_reneg_emb"].path)[0].tensor.shape == (1, 77, 1024)


def test_cache_reloads_changed_files(tmp_path):
    path = _write(tmp_path / "a.safetensors", seed=0)
    cache = library.EmbeddingCache()
    first, h1 = cache.load(path)
    _write(path, seed=5)
    second, h2 = cache.load(path)
    assert h1 != h2 and not torch.equal(first.tensor, second.tensor)


def test_script_args_from_ui_and_api():
    a = ScriptArgs.from_args([True, "sd1.5_reneg_emb"])
    assert a == ScriptArgs(enabled=True, embedding="sd1.5_reneg_emb")
    api = ScriptArgs.from_args(["true", "x", "0.5", 1, "12", 4, "hpsv2.1:1,aesthetic:0.5"])
    assert api.enabled and api.strength == 0.5 and api.refine and api.refine_steps == 12 and api.patience == 4
    assert ScriptArgs.from_args(api.as_list()) == api
    with pytest.raises(RenegError, match="strength"):
        ScriptArgs.from_args([True, "x", 1.5])
    with pytest.raises(RenegError, match="at most 7"):
        ScriptArgs.from_args([True] * 8)
    with pytest.raises(RenegError, match="Bad ReNeg script argument"):
        ScriptArgs.from_args([True, "x", "strong"])


def test_infotext_roundtrip():
    a = ScriptArgs(enabled=True, embedding="sd1.5_reneg_emb", strength=0.75, refine=True, refine_steps=8,
                   patience=2, reward="pickscore")
    params = {**infotext_params(a, "0123456789"), **refine_params(a, "0.1000->0.2000 (step 2)")}
    assert params[KEY_NAME] == "sd1.5_reneg_emb" and params[KEY_STRENGTH] == 0.75 and params[KEY_REWARD] == "pickscore"
    # the webui writes these as "Key: value" and parses them back to strings
    parsed = {k: str(v) for k, v in params.items()}
    assert args_from_infotext(parsed) == a
    plain = ScriptArgs(enabled=True, embedding="e")
    assert infotext_params(plain) == {KEY_NAME: "e"}  # defaults stay out of the infotext
    assert args_from_infotext({KEY_NAME: "e"}) == plain
    assert args_from_infotext({"Steps": "20"}) is None


def test_stack_rows_keeps_one_shared_negative_unbatched():
    base = torch.zeros(1, 2, 3)
    rows = [base, torch.full((1, 2, 3), 2.0), base]
    stacked = library.stack_rows(rows)
    assert stacked.shape == (3, 2, 3) and stacked[1, 0, 0] == 2
    assert library.stack_rows([base, base]) is base  # nothing refined: stays [1, T, D]


def test_refine_key_and_summary():
    a = ScriptArgs(enabled=True, embedding="e", refine=True)
    k1 = refine_key("m", "h", "p", 1, a, (7.0, 512, 512, 20, 5e-3))
    assert k1 != refine_key("m", "h", "p", 2, a, (7.0, 512, 512, 20, 5e-3))
    assert k1 == refine_key("m", "h", "p", 1, a, (7.0, 512, 512, 20, 5e-3))

    class R:
        start_reward, best_reward, best_step = 0.21, 0.2345, 4

    assert summarize_refinement([R()]) == "0.2100->0.2345 (step 4)"


def test_refined_filename_is_safe_and_stable():
    n = library.refined_filename("sub/dir name", "a cat", 3)
    assert n.startswith("refined/dir_name-") and n.endswith(".safetensors")
    assert n == library.refined_filename("sub/dir name", "a cat", 3) != library.refined_filename("x", "a cat", 4)


def test_parse_prompts(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("from file\n\n")
    assert parse_prompts("  a   cat \n# comment\n\nthe dog", str(f)) == ["a cat", "the dog", "from file"]
    with pytest.raises(RenegError, match="No training prompts"):
        parse_prompts(" \n# x\n")


def test_output_path_rules(tmp_path):
    assert output_path(tmp_path, "my run") == tmp_path / "my run.safetensors"
    assert output_path(tmp_path, "x.safetensors") == tmp_path / "x.safetensors"
    for bad in ("", "../up", "a/b", ".hidden"):
        with pytest.raises(RenegError, match="not valid"):
            output_path(tmp_path, bad)
    with pytest.raises(RenegError, match="textual-inversion"):
        output_path(tmp_path / "embeddings", "x", forbidden=[tmp_path / "embeddings"])


def test_live_view_images():
    imgs = tensor_to_pil(torch.rand(2, 3, 16, 24))
    assert len(imgs) == 2 and imgs[0].size == (24, 16) and imgs[0].mode == "RGB"
    curve = curve_image([0.1, 0.2, float("nan"), 0.25], size=(320, 200))
    assert curve.size == (320, 200)
    both = compose(imgs[0], curve)
    assert both.height == 200 and both.width > 320
    assert compose(None, curve) is curve


def test_infotext_records_refinement_only_when_it_ran():
    """Refine settings come from refine_params (after refinement ran), never from the enabled args alone: an
    image whose refinement was skipped must not turn refinement on when its infotext is pasted."""
    a = ScriptArgs(enabled=True, embedding="e", refine=True, refine_steps=8, patience=2, reward="hpsv2.1")
    applied = infotext_params(a, "h")
    assert KEY_REFINE_STEPS not in applied and KEY_REWARD not in applied
    skipped = {**applied, KEY_REFINE_SKIPPED: "The hpsv2.1 reward is not installed"}
    restored = args_from_infotext({k: str(v) for k, v in skipped.items()})
    assert restored.enabled and not restored.refine
    ran = {**applied, **refine_params(a, "0.1->0.2 (step 1)")}
    assert ran[KEY_REFINED] == "0.1->0.2 (step 1)" and args_from_infotext({k: str(v) for k, v in ran.items()}).refine


def test_xyz_overrides():
    base = ScriptArgs(enabled=False, embedding="ui-choice", strength=1.0)
    assert apply_overrides(base, None) is base
    on = apply_overrides(base, {"embedding": "other"})
    assert on.enabled and on.embedding == "other" and base.embedding == "ui-choice"
    assert not apply_overrides(ScriptArgs(enabled=True, embedding="x"), {"embedding": NO_EMBEDDING}).enabled
    s = apply_overrides(base, {"strength": 0.25})
    assert s.enabled and s.embedding == "ui-choice" and s.strength == 0.25
    assert not apply_overrides(ScriptArgs(), {"strength": 0.5}).enabled  # nothing chosen: stays off
    both = apply_overrides(base, {"embedding": NO_EMBEDDING, "strength": 0.5})
    assert not both.enabled
    with pytest.raises(RenegError, match="0..1"):
        apply_overrides(base, {"strength": 2})


def test_broken_files_are_left_out_with_the_loaders_own_reason(tmp_path):
    import os

    from reneg.core.embedding_io import load_embedding

    user = tmp_path / "models" / "ReNeg"
    _write(user / "good.safetensors")
    bad = user / "random.bin"
    bad.write_bytes(os.urandom(2048))
    (user / "empty.safetensors").write_bytes(b"")
    good, problems = library.scan_embeddings([user])
    assert list(good) == ["good"] and sorted(problems) == ["empty", "random"]
    with pytest.raises(RenegError) as raised:
        load_embedding(bad)
    assert problems["random"] == str(raised.value)  # not re-worded
    html = library.problems_html(problems)
    assert "random" in html and "empty" in html and library.problems_html({}) == ""
    _write(bad.with_suffix(".bin").with_name("random.safetensors"))  # fixing a file: listed after a re-scan
    bad.unlink()
    assert "random" in library.scan_embeddings([user])[0]
