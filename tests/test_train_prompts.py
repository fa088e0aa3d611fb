"""Prompt files and prompt sets (training input and evaluation sets)."""
from __future__ import annotations

import json

import pytest

from reneg.core import prompts as P
from reneg.core.errors import RenegError


def test_txt_skips_blank_lines_and_comments(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("\ufeffa cat\n\n  # a comment\n  a   dog  \n", encoding="utf-8")  # BOM as Windows editors write
    assert P.load_prompts(f) == ["a cat", "a dog"]


def test_jsonl_strings_and_objects(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('"a cat"\n{"prompt": "a dog", "style": "photo"}\n\n{"caption": "a house"}\n')
    items = P.read_prompt_file(f)
    assert [i.text for i in items] == ["a cat", "a dog", "a house"]
    assert [i.group for i in items] == ["all", "photo", "all"]


def test_json_list_and_style_dict(tmp_path):
    f = tmp_path / "anime.json"
    f.write_text(json.dumps(["a girl", "a robot"]))
    assert [(i.text, i.group) for i in P.read_prompt_file(f)] == [("a girl", "anime"), ("a robot", "anime")]
    g = tmp_path / "set.json"
    g.write_text(json.dumps({"photo": ["a car"], "paintings": ["a ship"]}))
    assert [(i.text, i.group) for i in P.read_prompt_file(g)] == [("a car", "photo"), ("a ship", "paintings")]


def test_csv_with_header_and_without(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text('id,Prompt,Category\n1,"a cat, sleeping",Animals\n2,a tree,Plants\n')
    items = P.read_prompt_file(f)
    assert [(i.text, i.group) for i in items] == [("a cat, sleeping", "Animals"), ("a tree", "Plants")]
    g = tmp_path / "q.csv"
    g.write_text("a cat\na dog\n")
    assert P.load_prompts(g) == ["a cat", "a dog"]


def test_parti_style_tsv(tmp_path):
    f = tmp_path / "PartiPrompts.tsv"
    f.write_text("Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\na red apple\tFood\tColors\tx\n")
    items = P.read_prompt_file(f)
    assert [(i.text, i.group) for i in items] == [("bond", "Abstract"), ("a red apple", "Food")]


def test_folder_is_one_group_per_file(tmp_path):
    (tmp_path / "photo.json").write_text(json.dumps(["a car", "a boat"]))
    (tmp_path / "anime.json").write_text(json.dumps(["a girl"]))
    items = P.load_prompt_set(str(tmp_path))
    assert [(i.text, i.group) for i in items] == [("a girl", "anime"), ("a car", "photo"), ("a boat", "photo")]
    assert [i.text for i in P.load_prompt_set(str(tmp_path), limit_per_group_=1)] == ["a girl", "a car"]


@pytest.mark.parametrize("name,content,match", [
    ("empty.txt", "\n\n# only a comment\n", "no prompts"),
    ("bad.jsonl", '{"prompt": "ok"}\n{oops\n', r"bad.jsonl:2"),
    ("bad.json", "{not json", "invalid JSON"),
    ("nokey.jsonl", '{"title": "x"}\n', "no prompt field"),
    ("p.yaml", "- a cat\n", "unsupported prompt file type"),
])
def test_bad_files_give_clear_errors(tmp_path, name, content, match):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(RenegError, match=match):
        P.load_prompts(f)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(RenegError, match="not found"):
        P.load_prompts(tmp_path / "nope.txt")
    f = tmp_path / "bin.txt"
    f.write_bytes(b"\xff\xfe\x00\x81\x82")
    with pytest.raises(RenegError, match="UTF-8"):
        P.load_prompts(f)


def test_hub_sets_use_huggingface_hub_files(tmp_path, monkeypatch):
    calls = []

    def fake_download(repo_id, filename):
        calls.append((repo_id, filename))
        local = tmp_path / filename.replace("/", "_")
        if filename.endswith(".json"):
            local.write_text(json.dumps([f"{filename} prompt 1", f"{filename} prompt 2"]))
        else:
            local.write_text("Prompt\tCategory\nan apple\tFood\na poem\tAbstract\n")
        return str(local)

    monkeypatch.setattr(P, "hub_download", fake_download)
    items = P.load_prompt_set("hpsv2")
    assert calls == [(P.HPSV2_REPO, f"benchmark/{s}.json") for s in P.HPSV2_STYLES]
    assert [i.group for i in items] == [s for s in P.HPSV2_STYLES for _ in range(2)]
    assert len(P.load_prompt_set("hpsv2:photo,anime", limit_per_group_=1)) == 2
    parti = P.load_prompt_set("parti")
    assert calls[-1] == (P.PARTI_REPO, P.PARTI_FILE) and {i.group for i in parti} == {"Food", "Abstract"}
    with pytest.raises(RenegError, match="Unknown HPSv2 style"):
        P.load_prompt_set("hpsv2:cartoon")
    with pytest.raises(RenegError, match="neither an existing file"):
        P.load_prompt_set("no-such-set")


def test_offline_hub_gives_clear_error(monkeypatch):
    def offline(repo_id, filename):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(P, "hub_download", offline)
    with pytest.raises(RenegError, match=r"(?s)zhwang/HPDv2/benchmark/anime.json.*Offline\?.*hf download"):
        P.load_prompt_set("hpsv2")


def test_real_hub_client_in_offline_mode_gives_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(RenegError, match="Parti-Prompts"):
        P.load_prompt_set("parti")
