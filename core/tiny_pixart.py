"""TEST MODEL ONLY: ``tiny-pixart``, a tiny random PixArt-α that needs no download.

Real diffusers/transformers classes with tiny, seeded configs: ``PixArtTransformer2DModel`` (AdaLN-single, learned
sigma: 8 output channels for 4 latent channels, ``sample_size=128`` so — like PixArt-XL-2-1024 — it takes the
resolution / aspect-ratio conditions), a one-layer ``T5EncoderModel`` whose width is the real 4096 (so the
released ``[1,120,4096]`` embedding applies as is; ``d_kv``/``d_ff`` are tiny, ~1.3M parameters), a tiny
``AutoencoderKL`` and a T5 Unigram tokenizer built in code (:func:`offline_t5_tokenizer`). Weights are random but
seeded: every build is identical. Images are noise-like; the model exists so PixArt runs offline on a CPU.
"""
from __future__ import annotations

import inspect
import string
from functools import lru_cache
from pathlib import Path

import torch

TINY_PIXART = "tiny-pixart"
T5_WIDTH = 4096
MAX_SEQUENCE_LENGTH = 120
_WORDS = ("a", "an", "the", "of", "in", "on", "with", "and", "photo", "painting", "portrait", "fox", "cat", "dog",
          "snow", "city", "night", "forest", "girl", "boy", "man", "woman", "red", "blue", "green", "blurry",
          "low", "quality", "ugly", "high", "detailed", "landscape", "mountain", "sea", "sky", "lake", "house")


def t5_vocab() -> list[tuple[str, float]]:
    """A small deterministic T5 vocabulary: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, "▁", words, then characters.

    Unigram scores prefer whole words over characters, so common words are single tokens (as in real T5).
    """
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -3.0 - 0.01 * i) for i, w in enumerate(_WORDS)]
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab += [("▁" + c, -8.0) for c in chars if c not in _WORDS] + [(c, -9.0) for c in chars]
    return vocab


@lru_cache(maxsize=None)
def offline_t5_tokenizer():
    """A ``transformers`` T5 tokenizer (Unigram, EOS appended, ``<pad>`` padding) over :func:`t5_vocab`."""
    from transformers import T5TokenizerFast

    kwargs = dict(model_max_length=MAX_SEQUENCE_LENGTH, extra_ids=0)
    if "vocab" in inspect.signature(T5TokenizerFast.__init__).parameters:  # transformers >= 5
        return T5TokenizerFast(vocab=t5_vocab(), **kwargs)
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors  # transformers 4.x
    from tokenizers.models import Unigram

    tok = Tokenizer(Unigram(t5_vocab(), unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always", split=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", **kwargs)


def tiny_pixart_components(seed: int = 2, sample_size: int = 128) -> dict:
    """Fresh seeded ``transformer``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` of ``tiny-pixart``.

    ``sample_size=128`` (default) uses the resolution/aspect-ratio conditions like PixArt-α 1024; ``64`` builds a
    512-style variant without them.
    """
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = offline_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = PixArtTransformer2DModel(
            num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=24, sample_size=sample_size, patch_size=2, caption_channels=T5_WIDTH,
            norm_type="ada_norm_single", num_embeds_ada_norm=1000, activation_fn="gelu-approximate",
            attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
            block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=0.18215)
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=T5_WIDTH, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
            feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0))
    # PixArt-XL-2's own scheduler config (DPM-Solver, linear betas); the engine samples it with DDIM.
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                            beta_schedule="linear", prediction_type="epsilon")
    return dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                scheduler=scheduler)


@lru_cache(maxsize=1)
def _cached_components() -> dict:
    return tiny_pixart_components()


def load_tiny_pixart_backend(fresh: bool = False):
    """A :class:`~.pixart_backend.PixArtBackend` on ``tiny-pixart`` (cached unless ``fresh``; treat as read-only)."""
    from .pixart_backend import PixArtBackend

    parts = tiny_pixart_components() if fresh else _cached_components()
    return PixArtBackend(**parts, name=f"{TINY_PIXART} (random test model)")


def save_tiny_pixart_pipeline(directory: str | Path) -> Path:
    """Write ``tiny-pixart`` as a diffusers folder (``PixArtAlphaPipeline.from_pretrained`` loads it)."""
    from diffusers import PixArtAlphaPipeline

    parts = tiny_pixart_components()
    PixArtAlphaPipeline(**parts).save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)
