"""LAION aesthetic predictor v2 ("improved aesthetic predictor"), about 1-10; prompt-independent.

``MLP(normalize(CLIP ViT-L/14 image embedding))`` with the MLP 768->1024->128->64->16->1 (dropouts, no
activations) of christophschuhmann/improved-aesthetic-predictor.

Weights (see ``weights.py`` for the lookup order):
  - head: ``sac+logos+ava1-l14-linearMSE.pth`` (3.7 MB state dict, keys ``layers.{0,2,4,6,7}.*``), hub repo
    ``camenduru/improved-aesthetic-predictor`` (a mirror of the GitHub repo's file); loaded with
    ``weights_only=True``. ``weights=`` points at this file (or its folder).
  - backbone: transformers ``openai/clip-vit-large-patch14`` (hub id, ``$RENEG_REWARDS_DIR/clip-vit-large-patch14``,
    or ``clip=`` a local folder).
Preprocessing is OpenAI CLIP's (shortest side 224 bicubic, centre crop, normalise) done in torch.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn

from ..errors import RenegError
from .preprocess import check_images, clip_preprocess
from .weights import freeze, load_pretrained, load_state_dict_file, resolve_file

AESTHETIC_REPO = "camenduru/improved-aesthetic-predictor"
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
CLIP_L14_REPO = "openai/clip-vit-large-patch14"


class AestheticHead(nn.Module):
    """The predictor's MLP; parameter names match the released ``.pth``."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class AestheticReward:
    """Aesthetic score ``[B]`` of ``[0, 1]`` images; differentiable, ignores the prompts."""

    def __init__(self, vision: nn.Module, head: AestheticHead, name: str = "aesthetic") -> None:
        self.vision = freeze(vision)  # transformers CLIPVisionModelWithProjection
        self.head = freeze(head)
        self.name = name
        self.image_size = int(vision.config.image_size)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "AestheticReward":
        self.vision.to(device=device, dtype=dtype)
        self.head.to(device=device, dtype=dtype)
        return self

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        check_images(images)
        p = next(self.vision.parameters())
        x = clip_preprocess(images.to(p.device, torch.float32), self.image_size).to(p.dtype)
        emb = self.vision(pixel_values=x).image_embeds
        return self.head(nn.functional.normalize(emb, dim=-1)).squeeze(-1).float()


def load_aesthetic(weights: str | os.PathLike | None = None, clip: str | os.PathLike | None = None,
                   device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> AestheticReward:
    """Aesthetic reward; ``weights``: the head ``.pth`` (or its folder); ``clip``: a local CLIP ViT-L/14 folder."""
    from transformers import CLIPVisionModelWithProjection

    state = load_state_dict_file(resolve_file(weights, AESTHETIC_FILE, AESTHETIC_REPO, "Aesthetic head"))
    vision = load_pretrained(clip, CLIP_L14_REPO, "CLIP ViT-L/14 (aesthetic backbone)",
                             lambda src: CLIPVisionModelWithProjection.from_pretrained(src))
    head = AestheticHead(int(vision.config.projection_dim))
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RenegError(f"{AESTHETIC_FILE}-style head expected (layers.0 ... layers.7): {str(e)[:500]}") from e
    return AestheticReward(vision, head).to(device, dtype)
