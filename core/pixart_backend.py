"""PixArt-α as a :class:`~.model_boundary.DiffusionBackend` (diffusers' ``PixArtTransformer2DModel`` + T5 + VAE).

The engine (CFG-DDIM, the ReNeg objective, training, refinement) is shared with SD; what is PixArt-specific lives
here: the transformer call with T5 attention masks and the resolution/aspect-ratio conditions, the learned-sigma
output (first half of the channels is ε), the T5 prompt encoding with a cache, and loading.

**How the attention mask travels** (evidence: ``docs/pixart.md``). The engine hands the backend plain
``[B, 120, 4096]`` contexts, so the mask is carried *in the tensor*, by :func:`attention_mask_of`:

* rows that are exactly zero are not attended — :meth:`PixArtBackend.encode_prompts` zeroes the padded rows of
  every T5 encoding (this changes nothing: diffusers masks those rows), and training keeps masked rows at zero
  (they get no gradient);
* a context whose rows ``1..T-1`` are bitwise identical (and non-zero) is the *empty prompt's* layout: T5 gives
  identical rows at every padded position exactly when one token (``</s>`` of ``""``) is attended. Only row 0 is
  attended — the mask ``[1, 0, …, 0]`` that ``PixArtAlphaPipeline`` builds for ``negative_prompt=""`` and under
  which the released ``pixart-alpha_reneg_emb.bin`` was learned (its rows 1–119 are bitwise identical);
* otherwise every row is attended.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .diffusers_backend import model_index_class
from .errors import MissingWeightsError, RenegError

FAMILY = "pixart-alpha"
MAX_SEQUENCE_LENGTH = 120


def attention_mask_of(context: torch.Tensor) -> torch.Tensor:
    """The T5 attention mask ``[B, T]`` (bool) a PixArt context carries in-band (rules: module docstring)."""
    ctx = context.detach()
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0)
    mask = ctx.ne(0).any(-1)
    if ctx.shape[1] > 2:
        empty_layout = (ctx[:, 2:] == ctx[:, 1:2]).all(-1).all(-1) & mask[:, 1]
        first_only = torch.zeros_like(mask)
        first_only[:, 0] = True
        mask = torch.where(empty_layout[:, None], first_only, mask)
    mask[:, 0] |= ~mask.any(-1)  # an all-zero context attends its first row (never an empty softmax)
    return mask


def mask_metadata(tensor: torch.Tensor) -> str:
    """The mask a negative is used (and was learned) under, as a ``0``/``1`` string of length T."""
    return "".join("1" if m else "0" for m in attention_mask_of(tensor)[0].tolist())


def apply_mask(tensor: torch.Tensor, mask: str | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """``tensor`` with the rows outside ``mask`` (a ``0``/``1`` string, list or tensor) set to zero."""
    if isinstance(mask, str):
        mask = [int(c) for c in mask.strip()]
    m = torch.as_tensor(mask, dtype=torch.bool, device=tensor.device)
    if m.numel() != tensor.shape[-2]:
        raise RenegError(f"Attention mask has {m.numel()} entries but the embedding has {tensor.shape[-2]} tokens.")
    return tensor * m[:, None].to(tensor.dtype)


class PixArtBackend:
    """PixArt-α from diffusers components; all weights frozen, eval mode.

    The T5 encoder stays on ``text_encoder_device`` (CPU by default) and is moved to the compute device only while
    encoding prompts that are not cached yet (:meth:`cache_prompts`); encodings are cached on the CPU in fp32.
    """

    family = FAMILY

    def __init__(self, transformer, vae, text_encoder, tokenizer, scheduler, name: str = "pixart",
                 max_sequence_length: int = MAX_SEQUENCE_LENGTH, text_encoder_device: str | torch.device = "cpu"):
        from diffusers import DDIMScheduler

        self.transformer, self.vae, self.text_encoder, self.tokenizer = transformer, vae, text_encoder, tokenizer
        for module in (transformer, vae, text_encoder):
            module.requires_grad_(False)
            module.eval()
        self.text_encoder.to(text_encoder_device)
        # DDIM on the model's own training schedule; no x0 clipping (latent space, as in SD's configs).
        ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=False)
        self.scheduler_config = ddim.config
        self._alphas_cumprod = ddim.alphas_cumprod.float().cpu()
        self.name = name
        self.prediction_type = ddim.config.prediction_type
        self.context_dim = int(transformer.config.caption_channels)
        self.latent_channels = int(transformer.config.in_channels)
        self.learned_sigma = int(transformer.config.out_channels) == 2 * self.latent_channels
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.max_sequence_length = int(max_sequence_length)
        self._prompt_cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    def to(self, device=None, dtype=None) -> "PixArtBackend":
        """Move the transformer and VAE; the T5 encoder only changes dtype (it stays offloaded)."""
        for module in (self.transformer, self.vae):
            if device is not None and module.device != torch.device(device):
                module.to(device=device)
        for module in (self.transformer, self.vae, self.text_encoder):
            if dtype is not None and module.dtype != dtype:
                module.to(dtype=dtype)
        return self

    def added_conditions(self, latents: torch.Tensor) -> dict:
        """PixArt's micro-conditions: pixel ``[h, w]`` and ``h/w`` when the transformer uses them (α-1024)."""
        if not self.transformer.use_additional_conditions:
            return {"resolution": None, "aspect_ratio": None}
        b, f = latents.shape[0], self.vae_scale_factor
        h, w = latents.shape[-2] * f, latents.shape[-1] * f
        res = torch.tensor([h, w]).repeat(b, 1).to(dtype=self.dtype, device=latents.device)
        ar = torch.tensor([float(h / w)]).repeat(b, 1).to(dtype=self.dtype, device=latents.device)
        return {"resolution": res, "aspect_ratio": ar}

    def model_output(self, latents: torch.Tensor, timestep, context: torch.Tensor) -> torch.Tensor:
        """ε prediction: the transformer with the context's attention mask; learned-sigma channels dropped."""
        mask = attention_mask_of(context).to(device=latents.device, dtype=torch.long)
        t = torch.as_tensor(timestep, device=latents.device).reshape(-1)
        t = t.expand(latents.shape[0]) if t.numel() == 1 else t
        out = self.transformer(latents.to(self.dtype), encoder_hidden_states=context.to(self.dtype),
                               encoder_attention_mask=mask, timestep=t,
                               added_cond_kwargs=self.added_conditions(latents), return_dict=False)[0]
        return out.chunk(2, dim=1)[0] if self.learned_sigma else out

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def cache_prompts(self, prompts: Iterable[str], batch_size: int = 16) -> None:
        """Encode the prompts not cached yet (T5 on the compute device meanwhile, then offloaded again)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if not missing:
            return
        home = self.text_encoder.device
        self.text_encoder.to(self.device)
        try:
            for i in range(0, len(missing), batch_size):
                chunk = missing[i:i + batch_size]
                texts = [p.lower().strip() for p in chunk]  # PixArtAlphaPipeline with clean_caption=False
                tok = self.tokenizer(texts, padding="max_length", max_length=self.max_sequence_length,
                                     truncation=True, add_special_tokens=True, return_tensors="pt")
                mask = tok.attention_mask.to(self.device)
                emb = self.text_encoder(tok.input_ids.to(self.device), attention_mask=mask)[0]
                emb = (emb * mask[..., None].to(emb.dtype)).float().cpu()  # padded rows -> 0 = not attended
                for prompt, row in zip(chunk, emb):
                    self._prompt_cache[prompt] = row
        finally:
            self.text_encoder.to(home)
            if self.device.type == "cuda" and home != self.device:
                torch.cuda.empty_cache()

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """T5 conditioning ``[len(prompts), 120, 4096]`` with padded rows zeroed (cached)."""
        self.cache_prompts(prompts)
        return torch.stack([self._prompt_cache[p] for p in prompts]).to(self.device, self.dtype)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute transformer/VAE activations in backward (less memory, more time)."""
        self.transformer.enable_gradient_checkpointing()
        if hasattr(self.vae, "enable_gradient_checkpointing"):
            self.vae.enable_gradient_checkpointing()

    def pipeline(self):
        """A ``PixArtAlphaPipeline`` sharing these components, with this backend's DDIM scheduler."""
        from diffusers import DDIMScheduler, PixArtAlphaPipeline

        return PixArtAlphaPipeline(tokenizer=self.tokenizer, text_encoder=self.text_encoder, vae=self.vae,
                                   transformer=self.transformer,
                                   scheduler=DDIMScheduler.from_config(self.scheduler_config))


def is_pixart_model(model: str) -> bool:
    """True for ``tiny-pixart``, a diffusers folder of a PixArt pipeline, or a hub id naming PixArt."""
    from .tiny_pixart import TINY_PIXART

    if model == TINY_PIXART:
        return True
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        return model_index_class(path).startswith("PixArt")
    return not path.exists() and model.count("/") == 1 and "pixart" in model.lower()


def load_pixart_backend(model: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                        ) -> PixArtBackend:
    """``tiny-pixart``, a local PixArt-α diffusers folder or a hub id, via ``PixArtAlphaPipeline.from_pretrained``."""
    from .tiny_pixart import TINY_PIXART, load_tiny_pixart_backend

    if model == TINY_PIXART:
        shared = torch.device(device) == torch.device("cpu") and dtype == torch.float32
        return load_tiny_pixart_backend(fresh=not shared).to(device=device, dtype=dtype)
    path = Path(os.path.expanduser(model))
    sigma = model_index_class(path) == "PixArtSigmaPipeline" if path.is_dir() else "sigma" in model.lower()
    if sigma:
        raise RenegError(f"'{model}' is a PixArt-Σ model; ReNeg supports PixArt-α "
                         "(e.g. PixArt-alpha/PixArt-XL-2-512x512).")
    from diffusers import PixArtAlphaPipeline

    try:
        pipe = PixArtAlphaPipeline.from_pretrained(str(path) if path.is_dir() else model, torch_dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise MissingWeightsError(
            f"Could not load PixArt-α model '{model}'. Pass a local diffusers folder of PixArt-α (with "
            "model_index.json, text_encoder/ and transformer/) or a hub id while online (e.g. "
            "PixArt-alpha/PixArt-XL-2-512x512). For an offline test use --model tiny-pixart.\n"
            f"Cause: {str(exc).splitlines()[0][:300]}") from exc
    backend = PixArtBackend(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, name=model)
    return backend.to(device=device)
