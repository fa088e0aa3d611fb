"""The hostile-input rules in the hosts (issue 14), table-driven, without a server: the ComfyUI nodes' file work
(:mod:`reneg.comfy_nodes.embedding_run`, ``train_modes``, ``reward_run``) and the A1111 tab/dropdown logic
(:mod:`reneg.a1111_extension.library`, ``train_logic``, ``reward_setup``) give the core loaders' one clear
message for every hostile file of the CLI suite, never run a pickle, and never replace a file unasked."""
from __future__ import annotations

import errno
import shutil

import pytest
import torch

import hostile_cases as H
from test_hostile_inputs import BAD_FILES, STATE_CASES, WEIGHT_CASES, assert_unchanged, snapshot
from reneg.a1111_extension import library, reward_setup, train_logic
from reneg.comfy_nodes import embedding_run, train_modes
from reneg.comfy_nodes.reward_run import build_node_reward, weights_problem
from reneg.core.checkpoint import state_path
from reneg.core.embedding_io import load_embedding, save_embedding
from reneg.core.errors import RenegError, WriteError
from reneg.core.train import TrainConfig

IDS = [b.__name__ for b, _ in BAD_FILES]
PROMPTS = ["a cat", "a dog"]


def assert_one_clear_message(message: str, *words: str, host_words: tuple = ()) -> None:
    """What a node error / tab message shows: one line, the problem's words, no traceback, no CLI-only advice."""
    assert message and "\n" not in message.strip(), message
    assert "Traceback" not in message and "weights_only=False" not in message and "\x1b" not in message, message
    for w in (*words, *host_words):
        assert w.lower() in message.lower(), f"{w!r} not in {message!r}"


def _hostile(tmp_path, build):
    folder = tmp_path / "models" / "reneg"
    folder.mkdir(parents=True)
    path = build(folder)
    return folder, path, snapshot(tmp_path)


def _after(tmp_path, before):
    assert not H.marker(tmp_path / "models" / "reneg").exists(), "a pickle ran code"
    assert_unchanged(tmp_path, before)


# ------------------------------------------------------------------------------------------------ ComfyUI
@pytest.mark.parametrize("build, words", BAD_FILES, ids=IDS)
def test_comfy_load_node_gives_the_loaders_message_at_queue_time_and_when_run(tmp_path, build, words):
    folder, path, before = _hostile(tmp_path, build)
    problem = embedding_run.file_problem(path)  # LoadEmbedding.validate_inputs: the red node, before any work
    assert_one_clear_message(problem, *words)
    with pytest.raises(RenegError) as err:  # LoadEmbedding.execute (a linked name is only known then)
        embedding_run.load_for_clip(path, path.name, 768, {})
    assert str(err.value) == problem
    _after(tmp_path, before)


@pytest.mark.parametrize("name, data, words", WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_comfy_reward_node_gives_one_clear_message_for_broken_weights(tmp_path, name, data, words):
    folder = tmp_path / "models" / "reneg_rewards"
    folder.mkdir(parents=True)
    (folder / name).write_bytes(data)
    before = snapshot(tmp_path)
    with pytest.raises(RenegError) as err:  # LoadReward.execute
        build_node_reward("tiny", name, "", [str(folder)])
    assert_one_clear_message(str(err.value), words)
    problem = weights_problem(name, [str(folder)])  # LoadReward.validate_inputs: at queue time, nothing loaded
    if name.endswith(".safetensors"):
        assert problem is None  # a garbled safetensors header is only found by the loader (when the node runs)
    else:
        assert problem == str(err.value)
    assert_unchanged(tmp_path, before)


def test_comfy_reward_node_refuses_evil_weights_at_queue_time_without_running_them(tmp_path):
    folder = tmp_path / "models" / "reneg_rewards"
    folder.mkdir(parents=True)
    H.evil_torch_zip(folder)
    assert_one_clear_message(weights_problem("evil_zip.pt", [str(folder)]) or "", "refused")
    assert_one_clear_message(weights_problem("nope.pt", [str(folder)]) or "", "not found", "refresh")
    assert weights_problem("auto", [str(folder)]) is None
    assert not H.marker(folder).exists()


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 2, "batch_size": 1, "micro_batch": 1, "num_inference_steps": 2, "last_k": 1,
                          "height": 64, "width": 64, **kw})


@pytest.mark.parametrize("name, data", STATE_CASES + [("foreign", None), ("folder", None)],
                         ids=[c[0] for c in STATE_CASES] + ["foreign", "folder"])
def test_comfy_train_continue_with_a_broken_state_names_the_if_exists_choices(tmp_path, name, data):
    out = tmp_path / "neg.safetensors"
    save_embedding(out, torch.zeros(1, 77, 768))
    spath = state_path(out)
    if name == "folder":
        spath.mkdir()
    elif name == "foreign":
        torch.save({"format": "reneg-train-state", "version": 1, "step": 1, "skipped": 0, "log": [],
                    "negative": torch.zeros(1, 77, 768), "optimizer": {}, "lr_scheduler": {},
                    "generator": torch.Generator().get_state(), "recipe": "{not json", "prompts_sha256": "x"}, spath)
    else:
        spath.write_bytes(data)
    before = snapshot(tmp_path)
    with pytest.raises(RenegError) as err:
        train_modes.plan_run(tmp_path, "neg", train_modes.CONTINUE, _cfg(), PROMPTS)
    message = str(err.value)
    assert_one_clear_message(message, "state", host_words=("restart",))
    assert "--" not in message, f"CLI flags in a node message: {message}"
    assert_unchanged(tmp_path, before)


#: an earlier run of neg.safetensors that left only some of its files (no state)
EARLIER = {"log": ["neg.log.csv"], "curve": ["neg.rewards.png"], "preview": ["neg.previews/step_000010.png"],
           "embedding": ["neg.safetensors"]}


@pytest.mark.parametrize("case", list(EARLIER))
def test_comfy_train_sees_every_file_of_an_earlier_run(tmp_path, case):
    for name in EARLIER[case]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"an earlier run's file")
    before = snapshot(tmp_path)
    with pytest.raises(RenegError) as err:  # continue: nothing to continue, and nothing replaced silently
        train_modes.plan_run(tmp_path, "neg", train_modes.CONTINUE, _cfg(), PROMPTS)
    assert_one_clear_message(str(err.value), EARLIER[case][0], "no training state", host_words=("'restart'", "'new name'"))
    plan = train_modes.plan_run(tmp_path, "neg", train_modes.NEW_NAME, _cfg(), PROMPTS)
    assert plan.out.name == "neg_00002.safetensors" and not plan.overwrite
    plan = train_modes.plan_run(tmp_path, "neg", train_modes.RESTART, _cfg(), PROMPTS)
    assert plan.out.name == "neg.safetensors" and plan.overwrite  # replacing is the user's explicit choice
    assert_unchanged(tmp_path, before)


def test_comfy_new_name_skips_names_an_earlier_run_left_only_a_log_under(tmp_path):
    (tmp_path / "neg.safetensors").write_bytes(b"x")
    (tmp_path / "neg_00002.log.csv").write_text("step\n")
    (tmp_path / "neg_00003.previews").mkdir()
    (tmp_path / "neg_00003.previews" / "step_000001.png").write_bytes(b"x")
    plan = train_modes.plan_run(tmp_path, "neg", train_modes.NEW_NAME, _cfg(), PROMPTS)
    assert plan.out.name == "neg_00004.safetensors"


def test_comfy_train_refusals_inside_the_engine_use_the_nodes_words(tmp_path, backend):
    """A run planned as fresh that finds an earlier run's files (another graph just wrote them) is refused in
    if_exists terms, before any step."""
    from reneg.core.rewards.synthetic import SyntheticReward
    from reneg.core.train import train_global

    out = tmp_path / "neg.safetensors"
    (tmp_path / "neg.rewards.png").write_bytes(b"written by another run meanwhile")
    before = snapshot(tmp_path)
    with pytest.raises(RenegError) as err:
        train_global(backend, SyntheticReward(), PROMPTS, _cfg(), out=out, choices=train_modes.NODE_CHOICES)
    assert_one_clear_message(str(err.value), "neg.rewards.png", host_words=("set if_exists to 'restart'",))
    assert_unchanged(tmp_path, before)


def test_comfy_save_node_never_replaces_a_file(tmp_path, monkeypatch):
    from reneg.comfy_nodes import files

    first = save_embedding(tmp_path / "negative_00001.safetensors", torch.ones(1, 77, 768))
    before = first.read_bytes()
    real = files.next_free_path
    stale = iter([first])  # a name picked just before another save took it (two graphs saving at once)
    monkeypatch.setattr(files, "next_free_path", lambda d, p: next(stale, None) or real(d, p))
    path = embedding_run.save_new(tmp_path, "negative", torch.zeros(1, 77, 768), note="x")
    assert path.name == "negative_00002.safetensors" and first.read_bytes() == before
    assert torch.equal(load_embedding(path).tensor, torch.zeros(1, 77, 768))


# ------------------------------------------------------------------------------------------------ A1111
@pytest.mark.parametrize("build, words", BAD_FILES, ids=IDS)
def test_a1111_dropdown_leaves_hostile_files_out_and_start_from_names_the_problem(tmp_path, build, words):
    folder, path, before = _hostile(tmp_path, build)
    save_embedding(folder / "good.safetensors", torch.randn(1, 77, 768) * 0.1)
    before = snapshot(tmp_path)
    good, bad = library.scan_embeddings([folder])
    assert list(good) == ["good"]
    listed = path.stem in library.list_embeddings([folder])  # FIFOs, folders, links to nowhere, .txt: not listed
    if listed:
        assert_one_clear_message(bad[path.stem], *words)  # shown under the dropdown (problems_html)
    with pytest.raises(RenegError) as err:  # the tab's 'Start from' (and the script's process) on that name
        train_logic.load_start(path.stem, [folder], 768, empty="(empty prompt)")
    assert_one_clear_message(str(err.value), *(words if listed else ["not found", "refresh"]))
    with pytest.raises(RenegError):
        library.EmbeddingCache().load(path)
    _after(tmp_path, before)


@pytest.mark.parametrize("name, data, words", WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_a1111_reward_check_gives_the_loaders_message(tmp_path, name, data, words):
    w = tmp_path / name
    w.write_bytes(data)
    before = snapshot(tmp_path)
    problem = reward_setup.looks_loadable(w)  # the tab's/script's 'installed?' check, before anything loads
    assert_one_clear_message(problem or "", "not a readable weights file" if name.endswith(".safetensors") else words)
    assert_unchanged(tmp_path, before)


TAB = ("tick 'overwrite an existing run'",)


@pytest.mark.parametrize("files_, resume, overwrite, words", [
    (["my.safetensors"], False, False, ["my.safetensors", "earlier run", *TAB]),
    (["my.log.csv"], False, False, ["my.log.csv", *TAB]),
    (["my.rewards.png"], False, False, ["my.rewards.png", *TAB]),
    (["my.previews/step_000005.png"], False, False, ["my.previews/step_000005.png", *TAB]),
    (["my.safetensors.state"], False, False, ["tick 'resume from", *TAB]),
    ([], True, False, ["nothing to resume", "untick 'resume'"]),
    ([], True, True, ["not both"]),
    (["my.previews"], False, True, ["my.previews is a file"]),
], ids=["embedding", "log", "curve", "preview", "state", "resume-nothing", "both-boxes", "previews-file"])
def test_a1111_tab_checks_its_output_before_any_work_in_its_own_words(tmp_path, files_, resume, overwrite, words):
    for name in files_:
        if name.endswith(".previews/step_000005.png"):
            (tmp_path / "my.previews").mkdir()
        (tmp_path / name).write_bytes(b"an earlier run's file")
    before = snapshot(tmp_path)
    with pytest.raises(RenegError) as err:
        train_logic.prepare_output(tmp_path, "my", resume=resume, overwrite=overwrite)
    assert_one_clear_message(str(err.value), *words)
    assert "--" not in str(err.value), f"CLI flags in a tab message: {err.value}"
    assert_unchanged(tmp_path, before)
    if not resume and not files_[0].endswith(".previews"):
        assert train_logic.prepare_output(tmp_path, "my", resume=False, overwrite=True) == tmp_path / "my.safetensors"


@pytest.mark.parametrize("name, data", STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_a1111_tab_resume_of_a_broken_state_is_one_tab_message(tmp_path, backend, name, data):
    from reneg.core.rewards.synthetic import SyntheticReward

    out = train_logic.prepare_output(tmp_path, "my", resume=False, overwrite=False)
    state_path(out).write_bytes(data)
    before = snapshot(tmp_path)
    with pytest.raises(RenegError) as err:
        train_logic.run_training(backend, SyntheticReward(), PROMPTS, _cfg(), out, resume=True)
    assert_one_clear_message(str(err.value), "unreadable training state", host_words=("untick 'resume'",))
    assert_unchanged(tmp_path, before)


def test_a1111_refined_files_are_never_replaced(tmp_path):
    t1, t2 = torch.randn(1, 77, 768) * 0.1, torch.randn(1, 77, 768) * 0.1
    path, saved = library.save_refined(tmp_path, "base", "a cat", 3, t1, ("model", 7.5, 20))
    assert saved and torch.equal(load_embedding(path).tensor, t1)
    again, saved = library.save_refined(tmp_path, "base", "a cat", 3, t2, ("model", 7.5, 20))
    assert again == path and not saved and torch.equal(load_embedding(path).tensor, t1)  # kept as it was
    other, saved = library.save_refined(tmp_path, "base", "a cat", 3, t2, ("model", 9.0, 20))
    assert other != path and saved  # other settings: another file, the first one untouched
    assert torch.equal(load_embedding(path).tensor, t1)


def test_a1111_refined_file_metadata_may_name_the_prompt_and_seed(tmp_path):
    """The script stores prompt= and seed= in the file's metadata (as script._maybe_save does); they must not
    collide with save_refined's own prompt/seed parameters (a TypeError there dropped the refinement)."""
    path, saved = library.save_refined(tmp_path, "base", "a cat", 3, torch.zeros(1, 77, 768), ("model",),
                                       prompt="a cat", seed="3", refined_from="base", steps=2)
    meta = load_embedding(path).metadata
    assert saved and meta["prompt"] == "a cat" and meta["seed"] == "3"


@pytest.mark.parametrize("host", ["comfy-save", "a1111-refined"])
def test_host_saves_on_a_full_disk_are_one_message_and_leave_nothing(tmp_path, monkeypatch, host):
    import safetensors.torch as st

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", full)
    before = snapshot(tmp_path)
    with pytest.raises(WriteError) as err:
        if host == "comfy-save":
            embedding_run.save_new(tmp_path, "negative", torch.zeros(1, 77, 768))
        else:
            library.save_refined(tmp_path, "base", "a cat", 3, torch.zeros(1, 77, 768))
    assert_one_clear_message(str(err.value), "disk is full", "nothing was replaced")
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers
    shutil.rmtree(tmp_path / "refined", ignore_errors=True)  # atomic_write may have made the folder
    assert_unchanged(tmp_path, before)
