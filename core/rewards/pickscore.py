"""PickScore reward: ``logit_scale.exp() * cosine(image, text)`` of the PickScore_v1 CLIP-H (about 100 x cos).

Weights: transformers ``CLIPModel`` folder ``yuvalkirstain/PickScore_v1`` (hub id, a local folder passed as
``weights=``, or ``$RENEG_REWARDS_DIR/PickScore_v1``); missing -> ``MissingWeightsError``.

Preprocessing is the processor's recipe done in torch (shortest side 224 bicubic, centre crop, OpenAI
normalisation); it differs from the PIL processor by about +-0.1 PickScore. Text uses open_clip's bundled
CLIP BPE tokenizer, which yields the same ids as the ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` tokenizer for
everything up to the end-of-text token; padding ids differ but cannot change the pooled (end-of-text) feature
because the text tower is causal. So no tokenizer download is needed.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from .hps import _match_prompts
from .preprocess import check_images, clip_preprocess
from .weights import freeze, load_pretrained

PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"


class HFClipReward:
    """``logit_scale.exp() * cosine`` of a transformers ``CLIPModel`` (PickScore when wrapping PickScore_v1)."""

    def __init__(self, model: torch.nn.Module, name: str = "pickscore") -> None:
        import open_clip

        self.model = freeze(model)
        self.name = name
        cfg = model.config
        self.image_size = int(cfg.vision_config.image_size)
        self.tokenizer = open_clip.SimpleTokenizer(context_length=int(cfg.text_config.max_position_embeddings))
        self._text_cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "HFClipReward":
        self.model.to(device=device, dtype=dtype)
        self._text_cache.clear()
        return self

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[len(prompts), D]`` (cached per prompt, at most 1024)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if missing:
            if len(self._text_cache) + len(missing) > 1024:
                self._text_cache.clear()
            ids = self.tokenizer(missing).to(self.device)
            out = self.model.text_model(input_ids=ids).pooler_output
            feats = torch.nn.functional.normalize(self.model.text_projection(out), dim=-1)
            self._text_cache.update(zip(missing, feats))
        return torch.stack([self._text_cache[p] for p in prompts])

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, D]`` of ``[0, 1]`` images; differentiable."""
        check_images(images)
        x = clip_preprocess(images.to(self.device, torch.float32), self.image_size).to(self.dtype)
        out = self.model.vision_model(pixel_values=x).pooler_output
        return torch.nn.functional.normalize(self.model.visual_projection(out), dim=-1)

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        prompts = _match_prompts(prompts, images.shape[0])
        cos = (self.image_features(images).float() * self.text_features(prompts).float()).sum(-1)
        return self.model.logit_scale.exp().float() * cos


def load_pickscore(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> HFClipReward:
    """PickScore_v1 reward; ``weights``: a local transformers folder of the model."""
    from transformers import CLIPModel

    model = load_pretrained(weights, PICKSCORE_REPO, "PickScore", lambda src: CLIPModel.from_pretrained(src))
    return HFClipReward(model, "pickscore").to(device, dtype)
