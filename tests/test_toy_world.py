"""The shipped TOY WORLD: weights load, the generator follows its captions (a rule-based classifier and the reward
agree with the caption) and responds to a negative, the reward prefers correct defect-free images, training is
reproducible, and the SD1 checkpoint round-trips. (What a negative does to the reward: test_toy_reneg.py.)"""
from __future__ import annotations

import json

import pytest
import torch

from reneg.core.diffusers_backend import load_backend
from reneg.core.rewards import build_reward
from reneg.core.toy_world import data
from reneg.core.toy_world.models import MANIFEST, UNET_GROUPS, VAE_GROUPS, WEIGHTS_DIR
from reneg.core.train import batch_latents, render

from toy_world_helpers import caption_accuracy

STEPS = 20
# Margins below what the shipped weights measured (CPU, these seeds; 12 held-out captions x 2 seeds, 20 DDIM steps,
# CFG 7.5, null negative unless said): colour + position right in 75.0% of images (colour 75%, position 100%;
# chance 8%); each image's own caption scores 71.4 vs -20.9 for another held-out caption on the toy reward
# (margin +92.2, 24/24 higher); the defect words as negative change pixels by 0.090 on average; reward pairs:
# clean > defective 85%, right > wrong caption 98%.
ACCURACY = 0.6
MATCH_MARGIN = 60.0
MATCH_WIN_RATE = 0.9
PIXEL_CHANGE = 0.06
_, HELD_OUT = data.split_prompts()
DEFECT_NEGATIVE = "blurry, washed out, cluttered"


@pytest.fixture(scope="module")
def toy():
    return load_backend("toy")


@pytest.fixture(scope="module")
def toy_reward():
    return build_reward("toy")


@pytest.fixture(scope="module")
def held_out_images(toy):
    """Held-out captions x 2 seeds, rendered with the null negative and with a defect negative prompt."""
    prompts = HELD_OUT * 2
    cond = toy.encode_prompts(prompts)
    latents = batch_latents(toy, list(range(len(prompts))), 32, 32)
    out = {"prompts": prompts}
    for name, text in (("null", ""), ("defects", DEFECT_NEGATIVE)):
        out[name] = render(toy, cond, toy.encode_prompts([text]), latents, STEPS, 7.5)
    return out


def test_shipped_files_are_small_labelled_and_load_everywhere_a_model_is_named():
    manifest = json.loads((WEIGHTS_DIR / MANIFEST).read_text())
    files = sorted(WEIGHTS_DIR.glob("*.safetensors"))
    assert {f.name for f in files} == {k for k in manifest["files"] if k.endswith(".safetensors")}
    assert sum(f.stat().st_size for f in files) < 30e6
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), "pt") as fh:
            assert "not for art" in fh.metadata()["toy_world"]
    a, b = load_backend("toy"), load_backend("toy-2")
    assert a.context_dim == b.context_dim == 64 and a.vae_scale_factor == 4
    assert a.name == "toy" and b.name == "toy-2"
    # the two generators share text encoder and VAE (SD1.4/1.5 style), not the UNet
    assert torch.equal(a.encode_prompts(["a red circle"]), b.encode_prompts(["a red circle"]))
    assert not torch.equal(a.unet.conv_in.weight[:8], b.unet.conv_in.weight[:8])
    assert build_reward("toy").name == "toy"


def test_generator_follows_its_captions(held_out_images, toy_reward):
    images, prompts = held_out_images["null"], held_out_images["prompts"]
    # a classifier that knows the data rules (colour + position of the foreground) agrees with the captions
    assert caption_accuracy(images, prompts) >= ACCURACY, caption_accuracy(images, prompts)
    # and the reward scores (nearly) every image higher with its own caption than with another held-out caption
    matched = toy_reward.score(images, prompts)
    mismatched = toy_reward.score(images, prompts[1:] + prompts[:1])
    assert float((matched - mismatched).mean()) >= MATCH_MARGIN, (matched.mean(), mismatched.mean())
    assert float((matched > mismatched).float().mean()) >= MATCH_WIN_RATE


def test_generator_responds_to_the_negative(held_out_images):
    null, neg = held_out_images["null"], held_out_images["defects"]
    assert float((null - neg).abs().mean()) >= PIXEL_CHANGE


def test_reward_prefers_correct_defect_free_images(toy_reward):
    from reneg.core.toy_world.train_world import reconstruct, reward_pairs

    caps, clean, bad = reward_pairs(seed=777, n=48)  # scenes the reward was not trained on
    vae = load_backend("toy").vae
    clean_r, bad_r = reconstruct(vae, clean), reconstruct(vae, bad)
    s_clean, s_bad = toy_reward.score(clean_r, caps), toy_reward.score(bad_r, caps)
    s_wrong = toy_reward.score(clean_r, caps[1:] + caps[:1])
    assert float((s_clean > s_bad).float().mean()) >= 0.7
    assert float((s_clean > s_wrong).float().mean()) >= 0.9


def test_training_is_reproducible():
    from reneg.core.toy_world.train_world import WorldRecipe, encode_all, train_reward, train_unet, train_vae

    recipe = WorldRecipe(vae_batch=4, unet_batch=4, reward_batch=4)
    scenes, images = data.make_dataset(0, 16)
    vae_a, vae_b = (train_vae(images, recipe, steps=2, log=None) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(vae_a.state_dict().values(), vae_b.state_dict().values()))
    import copy

    from reneg.core.toy_world.train_world import train_vae_decoder

    dec_a, dec_b = (train_vae_decoder(copy.deepcopy(vae_a), images, recipe, steps=2, log=None) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(dec_a.state_dict().values(), dec_b.state_dict().values()))
    # the decoder stage leaves the encoder (so every latent the UNets learned) as it was
    assert all(torch.equal(x, y) for x, y in zip(dec_a.encoder.state_dict().values(), vae_a.encoder.state_dict().values()))
    assert not torch.equal(dec_a.decoder.conv_out.weight, vae_a.decoder.conv_out.weight)
    latents = encode_all(vae_a, images)
    (u_a, t_a), (u_b, t_b) = (train_unet("toy", latents, 1.0, scenes, recipe, steps=2, log=None) for _ in range(2))
    (m_a, n_a), (m_b, n_b) = (train_unet("toy", latents, 1.0, scenes, recipe, steps=2, log=None, init_unet=u_a,
                                         init_text_encoder=t_a, lr=recipe.unet_more_lr, seed_offset=1000)
                              for _ in range(2))  # the toy-more continuation
    assert all(torch.equal(x, y) for x, y in zip(m_a.state_dict().values(), m_b.state_dict().values()))
    assert all(torch.equal(x, y) for x, y in zip(n_a.state_dict().values(), n_b.state_dict().values()))
    assert all(torch.equal(x, y) for x, y in zip(u_a.state_dict().values(), u_b.state_dict().values()))
    assert all(torch.equal(x, y) for x, y in zip(t_a.state_dict().values(), t_b.state_dict().values()))
    r_a, r_b = (train_reward(vae_a, recipe, steps=2, n_scenes=8, log=None) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(r_a.state_dict().values(), r_b.state_dict().values()))
    assert len(data.all_captions()) == 72 and data.scene_at(3, 5) == data.scene_at(3, 5)


def test_sd1_checkpoint_round_trips_through_diffusers_ldm_conversion(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
                                                     create_unet_diffusers_config_from_ldm,
                                                     create_vae_diffusers_config_from_ldm)
    from omegaconf import OmegaConf
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    from reneg.core.toy_world.checkpoint import write_toy_checkpoint

    toy = load_backend("toy")
    ckpt = write_toy_checkpoint(tmp_path, "toy")
    sd = load_file(str(ckpt))
    original = OmegaConf.to_container(OmegaConf.load(ckpt.with_suffix(".yaml")))
    assert original["model"]["params"]["scale_factor"] == pytest.approx(toy.scaling_factor)
    ucfg = create_unet_diffusers_config_from_ldm(original, sd, image_size=32)
    unet = UNet2DConditionModel(**ucfg, norm_num_groups=UNET_GROUPS)  # ldm configs imply 32 groups
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, ucfg), strict=True)
    vcfg = create_vae_diffusers_config_from_ldm(original, sd, image_size=32)
    vae = AutoencoderKL(**vcfg, norm_num_groups=VAE_GROUPS)
    vae.load_state_dict(convert_ldm_vae_checkpoint(sd, vcfg), strict=True)
    for mine, theirs in ((toy.unet, unet), (toy.vae, vae)):
        for (k, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b.reshape(a.shape)), k
    te = CLIPTextModel.from_pretrained(str(original["model"]["params"]["cond_stage_config"]["params"]["version"]))
    ids = toy.tokenizer(["a red circle on the left"], padding="max_length", max_length=77,
                        return_tensors="pt").input_ids
    assert torch.allclose(te(ids)[0], toy.text_encoder(ids)[0], atol=1e-6)
    assert sum(k.startswith("cond_stage_model.transformer.text_model.") for k in sd) == len(
        [k for k in toy.text_encoder.state_dict() if not k.endswith("position_ids")])
