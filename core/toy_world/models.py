"""TOY WORLD architectures and weight files (for demos and tests, not for art).

The generators are Stable-Diffusion-architecture latent diffusion models made of the diffusers / transformers
classes SD uses: ``AutoencoderKL`` (32x32 RGB <-> 4x8x8 latents), ``UNet2DConditionModel`` with cross-attention
and a ``CLIPTextModel`` (64 wide) on the real openai CLIP tokenizer. ``toy`` and ``toy-2`` share the text encoder
and the VAE and, like SD1.4 / SD1.5, ``toy-2`` is ``toy`` trained further (other seed, other data).

GroupNorms are wide: a GroupNorm scales each group to unit variance, so with few channels per group it erases how
strongly each group responds -- which is how these narrow nets encode colour. Measured on the VAE: 32 groups
reconstructed grey blobs; 8 groups (2 channels each) brown blobs (colour+position right in 54% of reconstructions
after 900 steps on 16x16 crops, 64% after 1500); 1 group: 100% (1500 steps on whole images). The UNets keep 8 groups (4-8
channels each). ``ldm``-based hosts hard-code 32 groups, so the SD1-format checkpoints of :mod:`.checkpoint` load
there but compute differently.

The ``toy`` reward is a small open_clip CLIP trained contrastively to prefer correct, defect-free images for their
caption (a toy HPSv2.1).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..clip_tokenizer import VOCAB_SIZE

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "world.json"
CONTEXT_DIM = 64
LATENT_CHANNELS = 4
IMAGE_SIZE = 32
VAE_GROUPS = 1
VAE_CHANNELS = (16, 32, 32)
UNET_GROUPS = 8

#: Stable Diffusion 1.x noise schedule (also what the pack's DDIM code assumes by default).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


@dataclass(frozen=True)
class ToyGenerator:
    """One toy generator: UNet widths, training seed, weight file (text encoder and VAE are shared), and -- like
    SD1.4 / SD1.5, both continued from SD1.2 -- optionally the generator it is continued from, on other data."""

    unet_file: str
    block_out_channels: tuple[int, int]
    seed: int
    init_from: Optional[str] = None
    data_seed: int = 0
    defect_prob: float = 0.3


TOY_GENERATORS: dict[str, ToyGenerator] = {
    "toy": ToyGenerator("toy_unet.safetensors", (32, 64), 0),
    # continued from toy with another seed on another dataset where defects are more common (40% vs 30%)
    "toy-2": ToyGenerator("toy2_unet.safetensors", (32, 64), 1, init_from="toy", data_seed=1, defect_prob=0.4),
}
TEXT_ENCODER_FILE = "toy_text_encoder.safetensors"
VAE_FILE = "toy_vae.safetensors"
REWARD_FILE = "toy_reward.safetensors"

REWARD_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 48, "head_width": 24, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": VOCAB_SIZE, "width": 32, "heads": 2, "layers": 1},
}


def build_vae(scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, layers_per_block=1,
                         norm_num_groups=VAE_GROUPS, block_out_channels=VAE_CHANNELS,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                         sample_size=IMAGE_SIZE, scaling_factor=scaling_factor)


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=CONTEXT_DIM, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=CONTEXT_DIM,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1))


def build_unet(block_out_channels: tuple[int, int]):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM, attention_head_dim=8, norm_num_groups=UNET_GROUPS)


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


def build_reward_clip(state: Optional[dict] = None, seed: int = 0):
    from ..rewards.hps import build_open_clip

    return build_open_clip(REWARD_CLIP_CONFIG, state, seed=seed)


def seeded(seed: int, build, *args, **kwargs):
    """``build(*args)`` with the torch RNG seeded (global RNG state restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- files
def save_weights(module: torch.nn.Module, path: Path, metadata: Optional[dict] = None) -> Path:
    """Atomically write ``module``'s state dict as fp16 safetensors (the shipped files are small)."""
    import os
    import tempfile

    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16 if v.is_floating_point() else v.dtype).contiguous().clone()
             for k, v in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    save_file(state, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def read_weights(name: str, weights_dir: Optional[Path] = None) -> dict[str, torch.Tensor]:
    """fp32 state dict of a shipped weight file; a clear error if the file is missing."""
    from safetensors.torch import load_file

    from ..errors import MissingWeightsError

    path = Path(weights_dir or WEIGHTS_DIR) / name
    if not path.is_file():
        raise MissingWeightsError(
            f"Toy-world weight file {path} is missing. It ships with the pack; rebuild it with "
            "`python -m reneg.core.toy_world.train_world` (about 50 minutes on a busy 2-core CPU).")
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}


def read_manifest(weights_dir: Optional[Path] = None) -> dict:
    path = Path(weights_dir or WEIGHTS_DIR) / MANIFEST
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}
