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

import torch

from .cosine import CosineReward
from .preprocess import check_images, clip_preprocess
from .weights import freeze, load_pretrained

PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"


class HFClipReward(CosineReward):
    """``logit_scale.exp() * cosine`` of a transformers ``CLIPModel`` (PickScore when wrapping PickScore_v1)."""

    def __init__(self, model: torch.nn.Module, name: str = "pickscore") -> None:
        import open_clip

        super().__init__()
        self.model = freeze(model)
        self.name = name
        cfg = model.config
        self.image_size = int(cfg.vision_config.image_size)
        self.tokenizer = open_clip.SimpleTokenizer(context_length=int(cfg.text_config.max_position_embeddings))

    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().float()

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        out = self.model.text_model(input_ids=self.tokenizer(prompts).to(self.device)).pooler_output
        return torch.nn.functional.normalize(self.model.text_projection(out), dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, D]`` of ``[0, 1]`` images; differentiable."""
        check_images(images)
        x = clip_preprocess(images.to(self.device, torch.float32), self.image_size).to(self.dtype)
        out = self.model.vision_model(pixel_values=x).pooler_output
        return torch.nn.functional.normalize(self.model.visual_projection(out), dim=-1)


def load_pickscore(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> HFClipReward:
    """PickScore_v1 reward; ``weights``: a local transformers folder of the model."""
    from transformers import CLIPModel

    model = load_pretrained(weights, PICKSCORE_REPO, "PickScore", lambda src: CLIPModel.from_pretrained(src))
    return HFClipReward(model, "pickscore").to(device, dtype)
