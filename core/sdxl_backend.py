"""SDXL as a :class:`~.model_boundary.DiffusionBackend` (diffusers' SDXL UNet, CLIP-L + OpenCLIP-bigG, VAE).

The engine (CFG-DDIM, the ReNeg objective, training, refinement, evaluation) is shared with SD and PixArt; what is
SDXL-specific lives here: the two text encoders (penultimate hidden states, concatenated; the pooled embedding
from bigG's projection), the UNet's ``added_cond_kwargs`` (pooled ``text_embeds`` + size/crop ``time_ids``), a
VAE decoded in fp32 when it would overflow in fp16 (``force_upcast``), and loading.

**The SDXL negative is a pair** — the cross-attention context ``[1, 77, 2048]`` and the pooled embedding
``[1, 1280]`` — and the engine handles it as *one* tensor (as PixArt carries its mask in-band): the **packed
layout** ``[B, 78, 2048]``, rows ``0..76`` the context and row ``77`` the pooled embedding in its first 1280
columns (the other 768 are zero and ignored). Concatenation, broadcasting, per-row selection, the gradient and
AdamW then work unchanged for SDXL, so the ReNeg math keeps its one place. :func:`pack` / :func:`unpack` convert;
files store the two tensors separately (:mod:`.embedding_io`). The size/crop conditioning stays this backend's:
``time_ids = (H, W, 0, 0, H, W)`` of the image, as ``StableDiffusionXLPipeline`` builds them by default.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Sequence

import torch

from .diffusers_backend import DiffusersBackend, model_index_class
from .errors import IncompatibleEmbeddingError, MissingWeightsError, RenegError

FAMILY = "sdxl"
CONTEXT_TOKENS = 77
CLIP_L_DIM, BIGG_DIM = 768, 1280
CONTEXT_DIM = CLIP_L_DIM + BIGG_DIM     #: 2048: the family is recognised by these text-encoder widths
POOLED_DIM = 1280
PACKED_TOKENS = CONTEXT_TOKENS + 1
POOLED_KEY = "reneg_negative_pooled"    #: the pooled tensor's key in a ReNeg .safetensors file
TINY_XL = "tiny-xl"


# ------------------------------------------------------------------------------------------- packed layout
def pack(context: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """``[B,77,2048]`` context + ``[B,1280]`` pooled -> the engine's packed ``[B,78,2048]`` (differentiable)."""
    if context.dim() == 2:
        context = context.unsqueeze(0)
    if pooled.dim() == 1:
        pooled = pooled.unsqueeze(0)
    if pooled.shape[-1] > context.shape[-1]:
        raise RenegError(f"pooled embedding {list(pooled.shape)} is wider than the context {list(context.shape)}.")
    pad = context.shape[-1] - pooled.shape[-1]
    row = torch.nn.functional.pad(pooled.to(context.dtype), (0, pad)).unsqueeze(1)
    return torch.cat([context, row.expand(context.shape[0], -1, -1) if row.shape[0] == 1 else row], dim=1)


def unpack(packed: torch.Tensor, pooled_dim: int = POOLED_DIM) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed ``[B,T+1,D]`` negative -> (context ``[B,T,D]``, pooled ``[B,pooled_dim]``) as views."""
    if packed.dim() == 2:
        packed = packed.unsqueeze(0)
    return packed[:, :-1], packed[:, -1, :pooled_dim]


def is_packed(tensor: torch.Tensor) -> bool:
    """True for an SDXL negative in the packed layout ``[B, 78, 2048]``."""
    return tensor.dim() >= 2 and tuple(tensor.shape[-2:]) == (PACKED_TOKENS, CONTEXT_DIM)


def check_packed(tensor: torch.Tensor, where: str = "model") -> None:
    """A 2048-wide negative for an SDXL model must carry its pooled part (one clear error otherwise)."""
    if not is_packed(tensor):
        raise IncompatibleEmbeddingError(
            f"This SDXL negative is shaped {list(tensor.shape)}: it has the 2048-wide cross-attention context but "
            f"not the pooled [1,{POOLED_DIM}] embedding the {where} needs (SDXL's uncond branch uses both). Use a "
            "ReNeg SDXL file (it stores both tensors), or learn one with `reneg train --model <SDXL model>`.")


def check_packed_chunks(context: torch.Tensor, where: str = "model") -> None:
    """A packed SDXL conditioning of one or more 77-token chunks, ``[B, 77·k + 1, 2048]`` (the webuis keep the k
    chunks of prompts over 75 tokens; the last row is the pooled one); one clear error otherwise."""
    tokens = context.shape[-2] - 1 if context.dim() == 3 else -1
    if context.dim() != 3 or context.shape[-1] != CONTEXT_DIM or tokens < CONTEXT_TOKENS or tokens % CONTEXT_TOKENS:
        raise RenegError(f"This SDXL negative is shaped {list(context.shape)}: the {where} needs the packed SDXL pair "
                         f"[batch, {PACKED_TOKENS}, {CONTEXT_DIM}] (cross-attention context + pooled embedding). Use a "
                         "ReNeg SDXL file (it stores both tensors).")


class PackedSDXLNegative:
    """What every SDXL backend (the CLI's, A1111's, Forge's) shares about its packed negative: the family, the
    pooled width, the ``freeze_pooled`` option and :meth:`frozen_entries`."""

    family = FAMILY
    pooled_dim = POOLED_DIM
    freeze_pooled = False  #: set by training/refinement options: the pooled part is not learned
    name: str

    def frozen_entries(self, negative: torch.Tensor, freeze_pooled: Optional[bool] = None) -> torch.Tensor:
        """:func:`packed_frozen_entries` (``freeze_pooled`` default: :attr:`freeze_pooled`)."""
        freeze = self.freeze_pooled if freeze_pooled is None else freeze_pooled
        return packed_frozen_entries(negative, freeze, f"model '{self.name}'")


def packed_frozen_entries(negative: torch.Tensor, freeze_pooled: bool = False, where: str = "model") -> torch.Tensor:
    """Bool mask of a packed SDXL negative's entries learning leaves unchanged: the unused padding of the pooled
    row always, the pooled embedding too when ``freeze_pooled``. Every SDXL backend's ``frozen_entries`` (the CLI's,
    ComfyUI's, A1111's, Forge's) is this function."""
    check_packed(negative, where)
    mask = torch.zeros(negative.shape, dtype=torch.bool, device=negative.device)
    mask[..., -1, 0 if freeze_pooled else POOLED_DIM:] = True
    return mask


# -------------------------------------------------------------------------------------------------- backend
class SDXLBackend(PackedSDXLNegative, DiffusersBackend):
    """SDXL from diffusers components; all weights frozen, eval mode. Contexts are in the packed layout.

    Shares the SD backend's plumbing (``device``/``dtype`` of the UNet, the schedule, gradient checkpointing);
    what differs is below."""

    def __init__(self, unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler,
                 name: str = "sdxl"):
        from diffusers import DDIMScheduler

        self.unet, self.vae = unet, vae
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        for module in (unet, vae, text_encoder, text_encoder_2):
            module.requires_grad_(False)
            module.eval()
        widths = (int(text_encoder.config.hidden_size), int(text_encoder_2.config.hidden_size))
        pooled = int(text_encoder_2.config.projection_dim)
        if sum(widths) != CONTEXT_DIM or pooled != POOLED_DIM or int(unet.config.cross_attention_dim) != CONTEXT_DIM:
            raise RenegError(f"'{name}' is not an SDXL base-type model: its text encoders are {widths[0]}+"
                             f"{widths[1]} wide with a {pooled}-wide pooled output (SDXL: 768+1280, 1280). "
                             "ReNeg's SDXL support covers SDXL base and its fine-tunes (not the refiner).")
        ddim = DDIMScheduler.from_config(scheduler.config)
        self.scheduler_config = ddim.config
        self._alphas_cumprod = ddim.alphas_cumprod.float().cpu()
        self.name = name
        self.prediction_type = ddim.config.prediction_type
        self.context_dim = CONTEXT_DIM
        self.latent_channels = int(unet.config.in_channels)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)

    def to(self, device=None, dtype=None) -> "SDXLBackend":
        """Move/cast the networks; a ``force_upcast`` VAE (the stock SDXL VAE) stays fp32 under fp16."""
        for module in (self.unet, self.vae, self.text_encoder, self.text_encoder_2):
            if device is not None and module.device != torch.device(device):
                module.to(device=device)
            want = dtype
            if module is self.vae and dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
                want = torch.float32
            if want is not None and module.dtype != want:
                module.to(dtype=want)
        return self

    def time_ids(self, latents: torch.Tensor) -> torch.Tensor:
        """``[B, 6]`` size/crop conditioning (original H, W; crop 0, 0; target H, W) as the pipeline's default."""
        f = self.vae_scale_factor
        h, w = latents.shape[-2] * f, latents.shape[-1] * f
        ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=self.dtype, device=latents.device)
        return ids.repeat(latents.shape[0], 1)

    def model_output(self, latents: torch.Tensor, timestep, context: torch.Tensor) -> torch.Tensor:
        """ε (or v) prediction of the SDXL UNet for packed contexts ``[B, 78, 2048]``."""
        check_packed(context, f"model '{self.name}'")
        ctx, pooled = unpack(context.to(self.dtype), self.pooled_dim)
        added = {"text_embeds": pooled.contiguous(), "time_ids": self.time_ids(latents)}
        return self.unet(latents.to(self.dtype), timestep, encoder_hidden_states=ctx.contiguous(), added_cond_kwargs=added,
                         return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiable VAE decode to ``[0, 1]``; a ``force_upcast`` VAE runs in fp32 even under fp16 autocast
        (``--mixed-precision fp16``), where the stock SDXL VAE would overflow to NaN."""
        vae = self.vae
        if getattr(vae.config, "force_upcast", False) and vae.dtype == torch.float32 and torch.is_autocast_enabled(
                latents.device.type):
            with torch.autocast(device_type=latents.device.type, enabled=False):
                return self.decode(latents.float())
        lat = latents.to(vae.dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(lat.device, lat.dtype)
            std = torch.tensor(std).view(1, -1, 1, 1).to(lat.device, lat.dtype)
            lat = lat * std / self.scaling_factor + mean
        else:
            lat = lat / self.scaling_factor
        image = vae.decode(lat, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def _encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Packed conditioning: both encoders' penultimate states (concatenated) + bigG's projected pooled."""
        contexts, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            tok = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
            out = encoder(tok.input_ids.to(encoder.device), output_hidden_states=True)
            if out[0].dim() == 2:  # CLIPTextModelWithProjection: text_embeds
                pooled = out[0]
            contexts.append(out.hidden_states[-2])
        if pooled is None:
            raise RenegError(f"'{self.name}': the second text encoder gives no pooled projection (SDXL's does).")
        return pack(torch.cat(contexts, dim=-1), pooled.to(contexts[0].dtype))

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Packed conditioning ``[len(prompts), 78, 2048]`` (no grad)."""
        return self._encode(prompts).to(self.device, self.dtype)

    def encode_prompts_fp32(self, prompts: Sequence[str]) -> torch.Tensor:
        """Like :meth:`encode_prompts` with both text encoders computing in fp32 (cast there and back)."""
        encoders = (self.text_encoder, self.text_encoder_2)
        dtypes = [e.dtype for e in encoders]
        for e in encoders:
            e.to(torch.float32)
        try:
            return self._encode(prompts).float()
        finally:
            for e, d in zip(encoders, dtypes):
                e.to(d)

    def pipeline(self):
        """A ``StableDiffusionXLPipeline`` sharing these components (DDIM scheduler, no watermark)."""
        from diffusers import DDIMScheduler, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler_config), add_watermarker=False)


def from_pipeline(pipe, name: str) -> SDXLBackend:
    """The backend over a loaded ``StableDiffusionXLPipeline``'s components."""
    if pipe.text_encoder is None or pipe.text_encoder_2 is None:
        raise RenegError(f"'{name}' has no CLIP-L text encoder (an SDXL refiner?); ReNeg's SDXL support covers "
                         "SDXL base and its fine-tunes.")
    return SDXLBackend(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer,
                       pipe.tokenizer_2, pipe.scheduler, name=name)


# -------------------------------------------------------------------------------------------------- loading
def single_file_is_sdxl(path: Path) -> bool:
    """True for an original-layout SDXL ``.safetensors`` checkpoint (judged by its header's keys, nothing read)."""
    if path.suffix.lower() != ".safetensors":
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return any(k.startswith("conditioner.embedders.1.") for k in fh.keys())
    except Exception:  # not readable as safetensors: the SD loader reports it
        return False


def _hub_index_class(repo: str) -> str | None:
    """The pipeline class in the *cached* ``model_index.json`` of a hub repo, or None when it is not cached (no
    network here: offline, a hub request costs retries before the loader's own attempt)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo, "model_index.json")
        return model_index_class(Path(cached).parent) if isinstance(cached, str) else None
    except Exception:  # a malformed repo id or cache: judge by the name
        return None


def is_sdxl_model(model: str) -> bool:
    """``tiny-xl``, an SDXL diffusers folder, an SDXL single-file checkpoint, or a hub id of an SDXL pipeline
    (by its cached ``model_index.json``, else by an ``xl`` / ``sdxl`` word in its name; an SDXL repo named
    otherwise: download it and pass the folder)."""
    if model == TINY_XL:
        return True
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        return model_index_class(path).startswith("StableDiffusionXL")
    if path.is_file():
        return single_file_is_sdxl(path)
    if path.exists() or model.count("/") != 1 or model.startswith((".", "/", "~")):
        return False
    name = model.lower()
    if "pixart" in name:
        return False
    known = _hub_index_class(model)
    if known is not None:
        return known.startswith("StableDiffusionXL")
    return "sdxl" in name or re.search(r"(?<![a-z])xl(?![a-z])", name) is not None


def _offline_hint(model: str, single_file: bool) -> str:
    hint = (f"Could not load SDXL model '{model}'. Pass a local SDXL diffusers folder (model_index.json, unet/, "
            "text_encoder/, text_encoder_2/), a single-file SDXL .safetensors checkpoint, or a hub id while online "
            "(e.g. stabilityai/stable-diffusion-xl-base-1.0). For an offline test use --model tiny-xl.")
    if single_file:
        hint += (" A single-file checkpoint needs the SDXL base configs (stabilityai/stable-diffusion-xl-base-1.0, "
                 "a few KB of JSON, no weights) from the Hugging Face hub cache: run the same command once while "
                 "online, or set RENEG_SDXL_CONFIG to a local SDXL diffusers folder whose configs to use.")
    return hint


def load_sdxl_backend(model: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                      ) -> SDXLBackend:
    """``tiny-xl``, an SDXL diffusers folder, a single-file ``.safetensors`` or a hub id."""
    if model == TINY_XL:
        from .tiny_sdxl import load_tiny_sdxl_backend

        shared = torch.device(device) == torch.device("cpu") and dtype == torch.float32
        return load_tiny_sdxl_backend(fresh=not shared).to(device=device, dtype=dtype)
    from diffusers import StableDiffusionXLPipeline

    path = Path(os.path.expanduser(model))
    kwargs = dict(torch_dtype=dtype, add_watermarker=False)
    single = path.is_file()
    try:
        if path.is_dir():
            pipe = StableDiffusionXLPipeline.from_pretrained(str(path), **kwargs)
        elif single:
            config = os.environ.get("RENEG_SDXL_CONFIG")
            extra = {"config": config} if config else {}
            pipe = StableDiffusionXLPipeline.from_single_file(str(path), **extra, **kwargs)
        else:
            pipe = StableDiffusionXLPipeline.from_pretrained(model, **kwargs)
    except RenegError:
        raise
    except (OSError, ValueError, EnvironmentError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise MissingWeightsError(f"{_offline_hint(model, single)}\nCause: {str(exc).splitlines()[0][:300]}"
                                  ) from exc
    return from_pipeline(pipe, name=model).to(device=device, dtype=dtype)
