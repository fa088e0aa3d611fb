"""The diffusers implementation of :class:`~.model_boundary.DiffusionBackend` and model loading.

``load_backend`` accepts ``tiny`` / ``tiny-v`` (random test models), ``toy`` / ``toy-2`` (the trained toy world,
``core/toy_world``), a local diffusers folder, a single-file
checkpoint (``.safetensors``/``.ckpt``) or a hub id; offline or missing weights give one clear error. PixArt-α
(``tiny-pixart``, a PixArt folder or hub id) is handed to :mod:`.pixart_backend`, SDXL (``tiny-xl``, an SDXL
folder, single file or hub id naming XL) to :mod:`.sdxl_backend`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from .errors import MissingWeightsError, RenegError


class DiffusersBackend:
    """SD1.x/SD2.x from diffusers components; all weights frozen, eval mode."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, name: str = "diffusers"):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        for module in (unet, vae, text_encoder):
            module.requires_grad_(False)
            module.eval()
        self.scheduler_config = scheduler.config
        self._alphas_cumprod = scheduler.alphas_cumprod.float().cpu()
        self.name = name
        self.prediction_type = scheduler.config.prediction_type
        self.context_dim = int(unet.config.cross_attention_dim)
        self.latent_channels = int(unet.config.in_channels)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    def to(self, device=None, dtype=None) -> "DiffusersBackend":
        for module in (self.unet, self.vae, self.text_encoder):
            if device is not None and module.device != torch.device(device):
                module.to(device=device)
            if dtype is not None and module.dtype != dtype:
                module.to(dtype=dtype)
        return self

    def model_output(self, latents: torch.Tensor, timestep, context: torch.Tensor) -> torch.Tensor:
        return self.unet(latents.to(self.dtype), timestep, encoder_hidden_states=context.to(self.dtype),
                         return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae_dtype = self.vae.dtype
        image = self.vae.decode(latents.to(vae_dtype) / self.scaling_factor, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def _encode(self, prompts: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tok.attention_mask.to(self.device)
        return self.text_encoder(tok.input_ids.to(self.device), attention_mask=mask)[0]

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self._encode(prompts).to(self.dtype)

    def encode_prompts_fp32(self, prompts: Sequence[str]) -> torch.Tensor:
        """Like :meth:`encode_prompts`, with the text encoder computing in fp32 (cast there and back: the
        fp16/bf16 -> fp32 -> fp16/bf16 round trip of the weights is exact)."""
        dtype = self.text_encoder.dtype
        if dtype == torch.float32:
            return self._encode(prompts).float()
        self.text_encoder.to(torch.float32)
        try:
            return self._encode(prompts).float()
        finally:
            self.text_encoder.to(dtype)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute UNet/VAE activations in backward (less memory, ~30% more time)."""
        self.unet.enable_gradient_checkpointing()
        if hasattr(self.vae, "enable_gradient_checkpointing"):
            self.vae.enable_gradient_checkpointing()

    def pipeline(self):
        """A ``StableDiffusionPipeline`` sharing these components (DDIM scheduler, no safety checker)."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler_config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)


def _from_pipeline(pipe, name: str) -> DiffusersBackend:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    return DiffusersBackend(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, scheduler, name=name)


def _offline_hint(model: str) -> str:
    return (f"Could not load Stable Diffusion model '{model}'. Pass a local diffusers folder (with "
            "model_index.json), a single-file .safetensors checkpoint, or a hub id while online "
            "(e.g. stable-diffusion-v1-5/stable-diffusion-v1-5). For an offline test use --model toy (trained toy "
            "world) or --model tiny (random).")


def model_index_class(folder: Path) -> str:
    """The pipeline class a folder's ``model_index.json`` names, or "" when it names none (a missing, oversized or
    malformed index is reported by the loader that needs it, with the file's name). Used to pick the family."""
    import json

    index = folder / "model_index.json"
    try:
        if index.stat().st_size > 1 << 20:
            return ""
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return ""
    name = data.get("_class_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else ""


def check_model_index(folder: Path) -> None:
    """A diffusers folder's ``model_index.json`` must be a readable JSON object naming its components."""
    import json

    index = folder / "model_index.json"
    if not index.is_file():
        raise RenegError(f"{folder} is a folder without model_index.json: not a diffusers model folder.")
    try:
        if index.stat().st_size > 1 << 20:
            raise ValueError("over 1 MB")
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise RenegError(f"{index} is not valid JSON ({str(exc)[:200] or type(exc).__name__}); the model folder is "
                         "damaged: download it again.") from exc
    missing = [k for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
               if not (isinstance(data, dict) and isinstance(data.get(k), list) and len(data[k]) == 2
                       and all(isinstance(x, (str, type(None))) for x in data[k]))]
    if missing:
        raise RenegError(f"{index} does not describe a Stable Diffusion pipeline (missing or malformed: "
                         f"{', '.join(missing)}); the model folder is damaged or not an SD1.x/SD2.x model.")


def load_backend(model: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                 ) -> DiffusersBackend:
    """Load a backend by name: ``tiny``, ``tiny-v``, ``toy``, ``toy-2``, a local folder, a single-file checkpoint
    or a hub id (PixArt-α names go to :mod:`.pixart_backend`, SDXL names to :mod:`.sdxl_backend`)."""
    from .pixart_backend import is_pixart_model, load_pixart_backend
    from .tiny_models import TINY_MODELS, load_tiny_backend
    from .toy_world import TOY_MODELS, load_toy_backend

    if is_pixart_model(model):  # tiny-pixart, a PixArt diffusers folder, or a PixArt hub id
        return load_pixart_backend(model, device=device, dtype=dtype)
    from .sdxl_backend import is_sdxl_model, load_sdxl_backend

    if is_sdxl_model(model):  # tiny-xl, an SDXL folder / single file, or a hub id naming XL
        return load_sdxl_backend(model, device=device, dtype=dtype)
    shared = torch.device(device) == torch.device("cpu") and dtype == torch.float32
    if model in TINY_MODELS:
        return load_tiny_backend(model, fresh=not shared).to(device=device, dtype=dtype)
    if model in TOY_MODELS:
        return load_toy_backend(model, fresh=not shared).to(device=device, dtype=dtype)
    from diffusers import StableDiffusionPipeline

    path = Path(os.path.expanduser(model))
    kwargs = dict(torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
    try:
        if path.is_dir():
            check_model_index(path)
            pipe = StableDiffusionPipeline.from_pretrained(str(path), **kwargs)
        elif path.is_file():
            if path.suffix.lower() not in (".safetensors", ".ckpt"):
                raise RenegError(f"{path}: single-file checkpoints must be .safetensors or .ckpt.")
            pipe = StableDiffusionPipeline.from_single_file(str(path), **kwargs)
        elif model.count("/") == 1 and not model.startswith((".", "/", "~")):
            pipe = StableDiffusionPipeline.from_pretrained(model, **kwargs)
        else:
            raise RenegError(f"Model '{model}' not found: no such file or folder, and not a hub id (owner/name).")
    except RenegError:
        raise
    except (OSError, ValueError, EnvironmentError, KeyError, TypeError, AttributeError) as exc:
        raise MissingWeightsError(f"{_offline_hint(model)}\nCause: {str(exc).splitlines()[0][:300]}") from exc
    return _from_pipeline(pipe, name=model).to(device=device)
