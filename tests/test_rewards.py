"""Reward models: preprocessing fidelity, loaders (no downloads), differentiability, mixes, errors."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
import torchvision.transforms.functional as TF

from reneg.core.errors import MissingWeightsError, RenegError, UnsafeFileError
from reneg.core.rewards import REWARD_NAMES, MixReward, Reward, build_reward, parse_reward_spec
from reneg.core.rewards.hps import HPS_FILES, build_open_clip, load_hps
from reneg.core.rewards.preprocess import OPENAI_MEAN, OPENAI_STD, clip_preprocess, hps_preprocess, normalize
from reneg.core.rewards.synthetic import TARGET_MEAN, TARGET_STD, SyntheticReward
from reneg.core.rewards.tiny import TINY_CLIP_CONFIG, load_tiny
from reneg.core.rewards.weights import REWARDS_DIR_ENV

open_clip = pytest.importorskip("open_clip")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub access, an empty hub cache, no rewards dir: every lookup must fail locally and fast."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv(REWARDS_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def tiny():
    return load_tiny()


def _images(b=2, h=48, w=40, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --- preprocessing -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(96, 64), (64, 96), (224, 224), (512, 512), (100, 37)])
def test_hps_preprocess_matches_torchvision_resize_max_size(hw):
    """Same as the HPSv2 fork's eval transform on tensors: ResizeMaxSize (bicubic, centred 0-pad) + normalise."""
    x = _images(2, *hw)
    h, w = hw
    scale = 224 / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    ref = TF.resize(x, [nh, nw], interpolation=TF.InterpolationMode.BICUBIC, antialias=True) if scale != 1 else x
    ph, pw = 224 - nh, 224 - nw
    ref = TF.pad(ref, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    ref = TF.normalize(ref, OPENAI_MEAN, OPENAI_STD)
    out = hps_preprocess(x)
    assert out.shape == (2, 3, 224, 224)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("hw", [(96, 64), (300, 500), (224, 224), (57, 57)])
def test_clip_preprocess_matches_torchvision_resize_center_crop(hw):
    x = _images(1, *hw)
    ref = TF.center_crop(TF.resize(x, 224, interpolation=TF.InterpolationMode.BICUBIC, antialias=True), [224, 224])
    out = clip_preprocess(x)
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out, TF.normalize(ref, OPENAI_MEAN, OPENAI_STD), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fn", [hps_preprocess, clip_preprocess])
def test_preprocess_gradient_reaches_pixels(fn):
    x = _images(2, 64, 48).requires_grad_(True)
    fn(x, 32).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum(dim=(1, 2, 3)).min() > 0


def test_hps_pad_is_black_before_normalisation():
    out = hps_preprocess(torch.ones(1, 3, 100, 50))  # -> 224x112 content, 56 px of padding each side
    black = normalize(torch.zeros(1, 3, 1, 1))
    torch.testing.assert_close(out[..., :, :56], black.expand(1, 3, 224, 56))
    torch.testing.assert_close(out[..., :, -56:], black.expand(1, 3, 224, 56))


@pytest.mark.parametrize("bad", [torch.rand(3, 64, 64), torch.rand(1, 4, 64, 64), torch.zeros(1, 3, 8, 8, dtype=torch.uint8)])
def test_bad_image_input_is_a_clear_error(tiny, bad):
    with pytest.raises(RenegError, match=r"\[B, 3, H, W\]|float"):
        tiny.score(bad, ["x"])


# --- HPS / open_clip loader -----------------------------------------------------------------------------------

def test_hps_loader_builds_exact_vit_h14_from_state_dict_file(tmp_path, monkeypatch, offline):
    """Full loader path on a real-format {"state_dict": ...} ViT-H-14 checkpoint whose tensors live on the meta
    device (the architecture is checked at full size without 4 GB of weights; no download is attempted)."""
    with torch.device("meta"):
        ref = open_clip.create_model("ViT-H-14", pretrained=None, device="meta")
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert len(ref_shapes) == 686
    torch.save({"state_dict": {k: v.half() for k, v in ref.state_dict().items()}}, tmp_path / HPS_FILES["hpsv2.1"])
    monkeypatch.setenv(REWARDS_DIR_ENV, str(tmp_path))  # found via the rewards dir, by its hub file name
    reward = build_reward("hpsv2.1", device="meta", dtype=torch.float16)
    assert isinstance(reward, Reward) and reward.name == "hpsv2.1"
    got = {k: tuple(v.shape) for k, v in reward.model.state_dict().items()}
    assert got == ref_shapes
    assert not any(p.requires_grad for p in reward.model.parameters()) and not reward.model.training
    with pytest.raises(MissingWeightsError, match=HPS_FILES["hpsv2"].replace(".", r"\.")):
        build_reward("hpsv2")  # the v2.0 file is not in the rewards dir


def _tiny_state(seed):
    m = build_open_clip(TINY_CLIP_CONFIG, seed=seed)
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_loader_scores_equal_a_directly_loaded_open_clip_model(tmp_path):
    state = _tiny_state(seed=123)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": state}, path)
    reward = build_reward("tiny", weights=path)
    assert reward.model.state_dict().keys() == state.keys()

    direct = open_clip.CLIP(**TINY_CLIP_CONFIG)
    direct.load_state_dict(state, strict=True)
    direct.eval()
    x, prompts = _images(3, 80, 64), ["a cat", "a red car at night", "a cat"]
    with torch.no_grad():
        img = direct.encode_image(hps_preprocess(x, 64), normalize=True)
        txt = direct.encode_text(open_clip.get_tokenizer("ViT-H-14")(prompts), normalize=True)
        expected = 100 * (img * txt).sum(-1)
    torch.testing.assert_close(reward.score(x, prompts).detach(), expected, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(load_tiny().score(x, prompts).detach(), expected)  # the file was really used


def test_loader_is_strict_and_refuses_code_execution(tmp_path, capsys):
    state = _tiny_state(seed=1)
    state.pop("logit_scale")
    torch.save({"state_dict": state}, tmp_path / "partial.pt")
    with pytest.raises(RenegError, match="logit_scale"):
        load_tiny(tmp_path / "partial.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f, protocol=2)
    with pytest.raises(UnsafeFileError, match="refused .*print.*not loaded"):
        load_tiny(tmp_path / "evil.pt")
    assert "executed" not in capsys.readouterr().out


# --- tiny / synthetic / mix -----------------------------------------------------------------------------------

def test_tiny_reward_is_differentiable_frozen_and_prompt_dependent(tiny):
    assert isinstance(tiny, Reward) and tiny.name == "tiny"
    x = _images(2, 64, 64).requires_grad_(True)
    s = tiny.score(x, ["a cat", "a dog"])
    assert s.shape == (2,) and s.dtype == torch.float32 and torch.isfinite(s).all()
    s.sum().backward()
    assert x.grad.abs().sum(dim=(1, 2, 3)).min() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny.model.parameters())
    other = tiny.score(x.detach(), ["a dog", "a cat"])
    assert not torch.allclose(other, s.detach())
    torch.testing.assert_close(tiny.score(x.detach(), ["a cat"]), tiny.score(x.detach(), ["a cat", "a cat"]))
    with pytest.raises(RenegError, match="2 images but 3 prompts"):
        tiny.score(x, ["a", "b", "c"])


def test_reward_dtype_bf16_keeps_fp32_scores_and_pixel_gradients(tiny):
    x, prompts = _images(2, 64, 64), ["a cat", "a dog"]
    low = load_tiny(dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    xg = x.clone().requires_grad_(True)
    s = low.score(xg, prompts)
    s.sum().backward()
    assert s.dtype == torch.float32 and xg.grad.dtype == torch.float32 and xg.grad.abs().sum() > 0
    torch.testing.assert_close(s.detach(), tiny.score(x, prompts).detach(), atol=1.5, rtol=0)


def test_tiny_reward_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a, b = load_tiny(), load_tiny()
    assert torch.equal(torch.random.get_rng_state(), before)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_synthetic_reward_optimum():
    r = build_reward("synthetic")
    assert isinstance(r, SyntheticReward) and isinstance(r, Reward)
    # A checkerboard with the target channel means and the target overall std reaches the maximum, 0.
    g = torch.ones(1, 1, 8, 8)
    g[..., ::2, ::2] = g[..., 1::2, 1::2] = -1
    mean = torch.tensor(TARGET_MEAN).view(1, 3, 1, 1)
    between = torch.tensor(TARGET_MEAN).var(unbiased=False)
    n = 3 * 64
    amp = ((TARGET_STD ** 2 * (n - 1) / n - between) ** 0.5).item()  # sample std over all pixels and channels
    best = mean + amp * g
    assert abs(r.score(best, ["any"]).item()) < 1e-5
    others = _images(16, 8, 8).clamp(0, 1)
    assert (r.score(others, ["x"] * 16) < r.score(best, ["y"])).all()
    # Gradient ascent from grey moves toward the optimum.
    x = torch.full((1, 3, 8, 8), 0.5) + 0.01 * torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    start = r.score(x, [""]).item()
    for _ in range(200):
        (g_,) = torch.autograd.grad(r.score(x, [""]).sum(), x)
        x = (x + 0.2 * g_).detach().requires_grad_(True)
    assert start < r.score(x, [""]).item() <= 0 and r.score(x, [""]).item() > -1e-3


def test_mix_is_the_weighted_sum(tiny):
    mix = build_reward("tiny:1, synthetic:0.25")
    assert isinstance(mix, MixReward) and mix.name == "tiny:1,synthetic:0.25"
    x, prompts = _images(2, 64, 64), ["a cat", "a dog"]
    expected = tiny.score(x, prompts) + 0.25 * SyntheticReward().score(x, prompts)
    torch.testing.assert_close(mix.score(x, prompts), expected.detach())
    parts = mix.components(x, prompts)
    assert set(parts) == {"tiny", "synthetic"}
    xg = x.clone().requires_grad_(True)
    mix.score(xg, prompts).sum().backward()
    assert xg.grad.abs().sum() > 0


def test_reward_spec_parsing_and_errors(tmp_path):
    assert parse_reward_spec("HPSv2.1:1,aesthetic:0.5") == [("hpsv2.1", 1.0), ("aesthetic", 0.5)]
    assert parse_reward_spec("pickscore") == [("pickscore", 1.0)]
    with pytest.raises(RenegError, match="twice"):
        parse_reward_spec("tiny:1,tiny:2")
    with pytest.raises(RenegError, match="Bad weight"):
        parse_reward_spec("tiny:abc")
    with pytest.raises(RenegError, match="dict name -> path"):
        build_reward("tiny:1,synthetic:1", weights=tmp_path / "x.pt")
    with pytest.raises(RenegError, match="not in the mix"):
        build_reward("tiny:1,synthetic:1", weights={"hpsv2.1": tmp_path / "x.pt"})
    with pytest.raises(RenegError, match="no weights"):
        build_reward("synthetic", weights=tmp_path / "x.pt")


@pytest.mark.parametrize("name", ["imagereward", "hps", "tiny:1,clip:1"])
def test_unknown_reward_name_lists_valid_names(name):
    with pytest.raises(RenegError) as e:
        build_reward(name)
    assert all(n in str(e.value) for n in REWARD_NAMES)


# --- missing weights --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, needle", [
    ("hpsv2.1", "HPS_v2.1_compressed.pt"), ("hpsv2", "HPS_v2_compressed.pt"),
    ("aesthetic", "sac+logos+ava1-l14-linearMSE.pth"), ("pickscore", "PickScore_v1")])
def test_missing_weights_offline_name_the_file_and_the_fix(offline, name, needle):
    with pytest.raises(MissingWeightsError) as e:
        build_reward(name)
    msg = str(e.value)
    assert needle in msg and "huggingface.co/" in msg and REWARDS_DIR_ENV in msg


def test_missing_explicit_path_is_missing_weights(offline, tmp_path):
    with pytest.raises(MissingWeightsError, match="HPS_v2.1_compressed.pt"):
        build_reward("hpsv2.1", weights=tmp_path / "nope")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        build_reward("hpsv2.1:1,synthetic:1", weights={"hpsv2.1": tmp_path / "nope.pt"})


# --- PickScore / aesthetic on tiny random transformers CLIPs ----------------------------------------------------

def _tiny_hf_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)


def test_pickscore_loader_matches_transformers_clip_logits(tmp_path):
    from transformers import CLIPModel

    torch.manual_seed(0)
    model = CLIPModel(_tiny_hf_clip_config()).eval()
    model.save_pretrained(tmp_path / "PickScore_v1")
    reward = build_reward("pickscore", weights=tmp_path / "PickScore_v1")
    x, prompts = _images(2, 40, 56), ["a cat", "two dogs on a beach"]
    ids = open_clip.SimpleTokenizer()(prompts)
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=clip_preprocess(x, 32)).logits_per_image.diagonal()
    xg = x.clone().requires_grad_(True)
    s = reward.score(xg, prompts)
    torch.testing.assert_close(s.detach(), expected, atol=1e-4, rtol=1e-5)
    s.sum().backward()
    assert xg.grad.abs().sum() > 0 and not any(p.requires_grad for p in reward.model.parameters())


def test_open_clip_tokenizer_ids_equal_hf_clip_tokenizer(tmp_path):
    """PickScore uses open_clip's bundled BPE instead of downloading the laion tokenizer: the ids up to the
    end-of-text token must equal transformers' CLIPTokenizer built from the same (OpenAI CLIP) vocabulary."""
    from transformers import CLIPTokenizer

    tok = open_clip.SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (tmp_path / "vocab.json").write_text(json.dumps({rename.get(k, k): v for k, v in tok.encoder.items()}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in tok.bpe_ranks) + "\n")
    hf = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), pad_token="<|endoftext|>")
    prompts = ["a photo of a cat", "An Astronaut riding a HORSE, trending on ArtStation!!",
               "café naïve — 東京 2024 ... don't   stop", "emoji 🐱 <b> a_b-c", "word " * 100]
    ours = tok(prompts)
    theirs = hf(prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
    for a, b in zip(ours, theirs):
        eot = int((a == 49407).nonzero()[0])
        assert torch.equal(a[: eot + 1], b[: eot + 1])


def test_aesthetic_loader_and_head(tmp_path):
    from transformers import CLIPVisionModelWithProjection

    from reneg.core.rewards.aesthetic import AESTHETIC_FILE, AestheticHead

    torch.manual_seed(0)
    cfg = _tiny_hf_clip_config().vision_config
    cfg.projection_dim = 768
    vision = CLIPVisionModelWithProjection(cfg).eval()
    vision.save_pretrained(tmp_path / "clip")
    head = AestheticHead().eval()
    torch.save(head.state_dict(), tmp_path / AESTHETIC_FILE)  # same format as the released .pth
    from reneg.core.rewards.aesthetic import load_aesthetic

    reward = load_aesthetic(weights=tmp_path, clip=tmp_path / "clip")
    x = _images(2, 48, 48)
    with torch.no_grad():
        emb = vision(pixel_values=clip_preprocess(x, 32)).image_embeds
        expected = head(torch.nn.functional.normalize(emb, dim=-1)).squeeze(-1)
    xg = x.clone().requires_grad_(True)
    s = reward.score(xg, ["ignored", "ignored"])
    torch.testing.assert_close(s.detach(), expected, atol=1e-5, rtol=1e-5)
    s.sum().backward()
    assert xg.grad.abs().sum() > 0
    assert not reward.head.training and not any(p.requires_grad for p in reward.head.parameters())


# --- equality with the official hpsv2 package (only where it is installed) -------------------------------------

def test_hps_score_equals_official_hpsv2(tmp_path):
    """Our HPS score equals ``hpsv2.score(...) * 100`` on the same image and checkpoint (a random, full-size
    ViT-H-14 checkpoint; ~10 GB RAM, ~1-2 min on CPU). Needs the hpsv2 package, which pins old pytest and
    other packages, so it runs only in a separate environment."""
    hpsv2 = pytest.importorskip("hpsv2", reason="hpsv2 not installed (never installed in the main venv)")
    from hpsv2 import img_score
    from hpsv2.src.open_clip import create_model_and_transforms
    from PIL import Image

    model, _, preprocess_val = create_model_and_transforms(
        "ViT-H-14", None, precision="amp", device="cpu", jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
        image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
        with_score_predictor=False, with_region_predictor=False)
    with torch.no_grad():  # make the random weights less degenerate than a zero-ish init
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ckpt = tmp_path / HPS_FILES["hpsv2.1"]
    torch.save({"state_dict": {k: v.half() for k, v in model.state_dict().items()}}, ckpt)
    img_score.model_dict.update(model=model, preprocess_val=preprocess_val)  # skip its LAION download
    prompt = "a watercolor painting of a lighthouse at dawn"
    pil = Image.fromarray((_images(1, 200, 320)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    official = float(img_score.score(pil, prompt, cp=str(ckpt), hps_version="v2.1")[0]) * 100

    reward = load_hps("hpsv2.1", ckpt)
    x = TF.to_tensor(pil).unsqueeze(0)
    ours = reward.score(x, [prompt]).item()
    assert ours == pytest.approx(official, abs=1e-3)
