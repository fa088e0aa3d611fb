"""Test helper: a tiny SDXL-layout ``sgm`` ``DiffusionEngine`` built from A1111's ``repositories/generative-models``
with A1111's own SDXL patches (``modules/sd_models_xl.py``) executed from the webui's source.

The model is ``configs/inference/sd_xl_base.yaml`` (the config A1111 loads SDXL with) made small: a two-level UNet
with SDXL's conditioning widths (context 2048, ``adm_in_channels`` 2816), a small VAE, and the real text embedder
classes (``FrozenCLIPEmbedder`` 768 wide, ``FrozenOpenCLIPEmbedder2`` 1280 wide with a 1280 projection) with two
layers each; SDXL's size/crop embedders unchanged. Weights are random and seeded.

A1111's ``get_learned_conditioning``, ``apply_model`` and ``extend_sdxl`` are compiled from
``$A1111_PATH/modules/sd_models_xl.py`` with the webui globals they read (``shared.opts``' SDXL crop / aesthetic
settings, ``devices.device`` / ``devices.dtype``) given as plain namespaces, so the test compares with the webui's
code itself rather than a copy.
"""
from __future__ import annotations

import ast
import os
import sys
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

A1111_PATH = os.environ.get("A1111_PATH")
TINY_BIGG = "reneg-tiny-bigG-14"


def sgm_path() -> Path:
    return Path(A1111_PATH) / "repositories" / "generative-models"


def ensure_sgm_importable() -> None:
    path = str(sgm_path())
    if path not in sys.path:
        sys.path.insert(0, path)


def a1111_sdxl_functions(opts: SimpleNamespace, devices: SimpleNamespace) -> dict:
    """``get_learned_conditioning``, ``apply_model`` and ``extend_sdxl`` compiled from A1111's
    ``modules/sd_models_xl.py`` with ``shared.opts`` / ``devices`` replaced by the given namespaces."""
    import sgm.models.diffusion
    import sgm.modules.diffusionmodules.denoiser_scaling
    import sgm.modules.diffusionmodules.discretizer

    source = (Path(A1111_PATH) / "modules" / "sd_models_xl.py").read_text()
    wanted = {"get_learned_conditioning", "apply_model", "extend_sdxl"}
    tree = ast.parse(source)
    tree.body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    namespace = {"torch": torch, "sgm": sgm, "shared": SimpleNamespace(opts=opts), "devices": devices,
                 "prompt_parser": None,
                 "torch_utils": SimpleNamespace(get_param=lambda m: next(m.parameters()))}
    exec(compile(tree, "modules/sd_models_xl.py", "exec"), namespace)  # noqa: S102 - the webui's own source
    return {name: namespace[name] for name in wanted}


def _register_tiny_bigg() -> None:
    from open_clip import factory

    factory._MODEL_CONFIGS[TINY_BIGG] = {
        "embed_dim": 1280,
        "vision_cfg": {"image_size": 28, "layers": 1, "width": 64, "head_width": 32, "patch_size": 14},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1280, "heads": 20, "layers": 2},
    }


def write_clip_l(directory: Path, seed: int = 0) -> Path:
    """A 768-wide two-layer random ``CLIPTextModel`` + the real CLIP tokenizer files (``from_pretrained`` folder)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from reneg.core.clip_tokenizer import VOCAB_SIZE, write_clip_tokenizer_files

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(CLIPTextConfig(
            vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=768, bos_token_id=49406,
            eos_token_id=49407, pad_token_id=1))
    model.save_pretrained(str(directory))
    write_clip_tokenizer_files(directory)
    return directory


def tiny_config(clip_l_dir: Path):
    """``sd_xl_base.yaml`` made tiny (see the module docstring)."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(str(sgm_path() / "configs" / "inference" / "sd_xl_base.yaml"))
    net = config.model.params.network_config.params
    net.update(model_channels=32, attention_resolutions=[2], num_res_blocks=1, channel_mult=[1, 2],
               num_head_channels=16, transformer_depth=[0, 1], spatial_transformer_attn_type="softmax",
               use_checkpoint=False)  # as A1111's sd_models.repair_config sets it for inference
    emb = config.model.params.conditioner_config.params.emb_models
    emb[0].params.update(version=str(clip_l_dir), layer_idx=1)
    emb[1].params.update(arch=TINY_BIGG, version=None)
    dd = config.model.params.first_stage_config.params.ddconfig
    dd.update(ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1, attn_type="vanilla")
    return config


def build_tiny_sdxl(clip_l_dir: Path, seed: int = 0, crop=(0, 0)):
    """(A1111-patched tiny ``DiffusionEngine``, the opts namespace it reads) — eval, frozen, fp32, CPU."""
    ensure_sgm_importable()
    _register_tiny_bigg()
    from sgm.util import instantiate_from_config

    config = tiny_config(clip_l_dir)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        model = instantiate_from_config(config.model)
        for p in model.parameters():  # random weights also where sgm initialises zeros (zero_module outputs)
            if p.dim() > 1 and p.abs().sum() == 0:
                p.data.normal_(0, 0.02)
    model.eval().requires_grad_(False)
    for e in model.conditioner.embedders:
        if hasattr(e, "device"):
            e.device = "cpu"  # sgm's text embedders default to cuda
    # open_clip >= 2.23 runs its transformer batch-first; sgm (like open_clip 2.20 in A1111's venv) feeds it
    # sequence-first tensors: give the attention layers the layout sgm expects
    for r in model.conditioner.embedders[1].model.transformer.resblocks:
        r.attn.batch_first = False
    opts = SimpleNamespace(sdxl_crop_top=int(crop[0]), sdxl_crop_left=int(crop[1]),
                           sdxl_refiner_low_aesthetic_score=2.5, sdxl_refiner_high_aesthetic_score=6.0)
    devices = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32)
    fns = a1111_sdxl_functions(opts, devices)
    model.get_learned_conditioning = types.MethodType(fns["get_learned_conditioning"], model)
    model.apply_model = types.MethodType(fns["apply_model"], model)
    model.is_sdxl, model.is_sdxl_inpaint = True, False
    fns["extend_sdxl"](model)
    return model, opts


class Conditioning(list):
    """A prompt list with the attributes A1111's ``prompt_parser.SdConditioning`` carries."""

    def __init__(self, prompts, width=1024, height=1024, is_negative_prompt=False):
        super().__init__(prompts)
        self.width, self.height, self.is_negative_prompt = width, height, is_negative_prompt


__all__ = ["Conditioning", "build_tiny_sdxl", "ensure_sgm_importable", "write_clip_l"]
