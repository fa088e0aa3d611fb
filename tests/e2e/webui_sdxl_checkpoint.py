"""TEST MODEL: a random-weight SDXL-family checkpoint that both A1111 (sgm ``DiffusionEngine``) and Forge load as SDXL.

One original-layout ``.safetensors`` (the layout of every SDXL file: ``model.diffusion_model.``, ``first_stage_model.``,
``conditioner.embedders.0.transformer.`` (CLIP-L), ``conditioner.embedders.1.model.`` (OpenCLIP-bigG)), plus

* ``<name>.yaml`` beside it: the sgm config A1111 reads instead of its ``sd_xl_base.yaml`` (this UNet's shape; the
  CLIP-L ``version`` is a local folder, bigG's ``version`` is null, so nothing is downloaded);
* ``<name>-clip-l/``: that folder (CLIP-L ``config.json`` + the real CLIP tokenizer files; the weights are in the
  checkpoint, which A1111 loads with ``--do-not-download-clip``).

The UNet is small: 320 channels at three levels, one res block each, transformer depths ``[0, 2, 5]`` (KOALA-700M's
input depths: Forge's ``huggingface_guess`` detects it as ``KOALA_700M``, an SDXL subclass that Forge runs with its
SDXL engine), middle depth 1, 2816-wide ``adm`` input and 2048-wide context. Forge builds the VAE and both text
encoders from its shipped SDXL-base configs, so those are full size here (bigG's text tower alone is ~695M
parameters): the file is ~2 GB in fp16, built once per cache folder. Built with A1111's own sgm classes (run with
A1111's Python, ``repositories/generative-models`` on the path: PyPI has no ``sgm``) on the meta device, then given
torch's default layer init (sgm zero-initialises output convs, and a UNet that ignores its text would hide bugs).

Both webuis load it (A1111 v1.10.1 and Forge f2.0.1, CPU): a 3-step 64x64 DDIM image has the same pixel std in
each (51.810405 vs 51.810407). Offline, A1111 on SDXL tries to download ``vaeapprox-sdxl.pt`` for its default
"Approx NN" live preview (only the SD1 one ships): generations in tests pass
``override_settings={"live_previews_enable": False}`` (or set ``show_progress_type`` to "Approx cheap").

    python webui_sdxl_checkpoint.py OUT_DIR     # with A1111's python and PYTHONPATH=<A1111>/repositories/generative-models
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

#: Bump when the builder changes so cached checkpoints are rebuilt.
VERSION = "1"
NAME = "reneg-e2e-sdxl"

UNET = dict(adm_in_channels=2816, num_classes="sequential", use_checkpoint=False, in_channels=4, out_channels=4,
            model_channels=320, attention_resolutions=[4, 2], num_res_blocks=1, channel_mult=[1, 1, 1],
            num_head_channels=64, use_spatial_transformer=True, use_linear_in_transformer=True,
            transformer_depth=[0, 2, 5], transformer_depth_middle=1, context_dim=2048,
            spatial_transformer_attn_type="softmax", legacy=False)

#: CLIP-L as in SDXL base (``text_encoder/config.json``); only the config is written, the weights are in the file.
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0,
              eos_token_id=2, pad_token_id=1)


def sgm_config(clip_l_dir: str) -> dict:
    """The ``model:`` config A1111 instantiates for the checkpoint (``sd_xl_base.yaml`` with this UNet)."""
    size = dict(is_trainable=False, target="sgm.modules.encoders.modules.ConcatTimestepEmbedderND",
                params=dict(outdim=256))
    return {"model": {"target": "sgm.models.diffusion.DiffusionEngine", "params": {
        "scale_factor": 0.13025, "disable_first_stage_autocast": True,
        "denoiser_config": {"target": "sgm.modules.diffusionmodules.denoiser.DiscreteDenoiser", "params": {
            "num_idx": 1000,
            "weighting_config": {"target": "sgm.modules.diffusionmodules.denoiser_weighting.EpsWeighting"},
            "scaling_config": {"target": "sgm.modules.diffusionmodules.denoiser_scaling.EpsScaling"},
            "discretization_config": {"target": "sgm.modules.diffusionmodules.discretizer.LegacyDDPMDiscretization"}}},
        "network_config": {"target": "sgm.modules.diffusionmodules.openaimodel.UNetModel", "params": UNET},
        "conditioner_config": {"target": "sgm.modules.GeneralConditioner", "params": {"emb_models": [
            dict(is_trainable=False, input_key="txt", target="sgm.modules.encoders.modules.FrozenCLIPEmbedder",
                 params=dict(layer="hidden", layer_idx=11, version=clip_l_dir)),
            dict(is_trainable=False, input_key="txt", target="sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2",
                 params=dict(arch="ViT-bigG-14", version=None, freeze=True, layer="penultimate",
                             always_return_pooled=True, legacy=False)),
            {**size, "input_key": "original_size_as_tuple"},
            {**size, "input_key": "crop_coords_top_left"},
            {**size, "input_key": "target_size_as_tuple"}]}},
        "first_stage_config": {"target": "sgm.models.autoencoder.AutoencoderKLInferenceWrapper", "params": {
            "embed_dim": 4, "monitor": "val/rec_loss",
            "ddconfig": dict(attn_type="vanilla", double_z=True, z_channels=4, resolution=256, in_channels=3,
                             out_ch=3, ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[],
                             dropout=0.0),
            "lossconfig": {"target": "torch.nn.Identity"}}}}}}


def write_clip_l_folder(directory: Path) -> Path:
    """CLIP-L's ``config.json`` and the real CLIP tokenizer files (run in the pack's venv)."""
    from transformers import CLIPTextConfig

    from reneg.core.clip_tokenizer import write_clip_tokenizer_files

    directory.mkdir(parents=True, exist_ok=True)
    CLIPTextConfig(**CLIP_L).save_pretrained(str(directory))
    write_clip_tokenizer_files(directory)
    return directory


def _init_like_torch(module, seed: int) -> None:
    """Torch's default init for every layer of a module materialised from meta (sgm zero-inits output convs); loose
    parameters (open_clip's positional embedding, projection, logit scale) get small normal values; LayerNorm
    biases are random so that token features do not average to exactly 0 (A1111's emphasis divides by that mean)."""
    import torch

    torch.manual_seed(seed)
    done = set()
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset) and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm,
                                             torch.nn.Embedding, torch.nn.MultiheadAttention)):
            reset()
            if isinstance(m, torch.nn.LayerNorm) and m.bias is not None:
                m.bias.data.normal_(0.0, 0.1)
            done.update(id(p) for p in m.parameters())
    with torch.no_grad():
        for name, p in module.named_parameters():
            if id(p) not in done:
                p.normal_(0.0, 0.01) if p.dim() else p.fill_(4.6052)  # logit_scale = log(100), as open_clip
        for name, b in module.named_buffers():
            if b.is_floating_point() and not torch.isfinite(b).all():
                b.zero_()


@contextlib.contextmanager
def _no_downloads_on_meta():
    """While the embedders are built: CLIP-L from its config only (no weights file), bigG without pretrained weights
    and on the meta device (open_clip would otherwise move it to the CPU)."""
    import open_clip
    import sgm.modules.encoders.modules as encoders
    import torch
    from transformers import CLIPTextConfig

    original_clip, original_open_clip = encoders.CLIPTextModel.from_pretrained, open_clip.create_model_and_transforms
    encoders.CLIPTextModel.from_pretrained = lambda version, *a, **k: encoders.CLIPTextModel(
        CLIPTextConfig.from_pretrained(version))
    open_clip.create_model_and_transforms = lambda arch, device=None, pretrained=None, **k: original_open_clip(
        arch, device=torch.device("meta"), pretrained=None, **k)
    try:
        yield
    finally:
        encoders.CLIPTextModel.from_pretrained, open_clip.create_model_and_transforms = original_clip, original_open_clip


def build(out_dir: Path, seed: int = 0) -> Path:
    """Run in A1111's Python: the UNet, VAE and conditioner of :func:`sgm_config` built on meta (the bigG visual
    tower, deleted by its embedder, costs nothing), initialised, saved in fp16 under the keys A1111's
    ``DiffusionEngine`` has (``model.diffusion_model.``, ``first_stage_model.``, ``conditioner.``)."""
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file
    from sgm.util import instantiate_from_config

    clip_dir = out_dir / f"{NAME}-clip-l"
    config = OmegaConf.create(sgm_config(str(clip_dir.resolve())))
    params = config.model.params
    parts = {}
    with torch.device("meta"):
        parts["model.diffusion_model."] = instantiate_from_config(params.network_config)
        parts["first_stage_model."] = instantiate_from_config(params.first_stage_config)
        with _no_downloads_on_meta():
            parts["conditioner."] = instantiate_from_config(params.conditioner_config)
    state = {}
    for i, (prefix, module) in enumerate(parts.items()):
        module.to_empty(device="cpu")
        _init_like_torch(module, seed + i)
        state.update({prefix + k: v.detach() for k, v in module.state_dict().items()})
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    ids = "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"
    if ids in state:
        state[ids] = torch.arange(77)[None]
    ckpt = out_dir / f"{NAME}.safetensors"
    tmp = ckpt.with_suffix(".partial")
    save_file(state, str(tmp), metadata={"reneg_test_model": "random weights, for tests only"})
    os.replace(tmp, ckpt)
    (out_dir / f"{NAME}.yaml").write_text(OmegaConf.to_yaml(config), encoding="utf-8")
    return ckpt


def ensure(cache_dir: Path, a1111_path: str | None = None, a1111_python: str | None = None) -> Path:
    """The checkpoint (built once per cache folder and builder version); its ``.yaml`` and CLIP-L folder beside it.

    Building needs A1111's checkout and Python (``A1111_PATH``/``A1111_PYTHON``) for the sgm classes."""
    out = Path(cache_dir) / f"webui-sdxl-v{VERSION}"
    ckpt = out / f"{NAME}.safetensors"
    if ckpt.is_file() and (out / f"{NAME}.yaml").is_file():
        return ckpt
    a1111_path = a1111_path or os.environ.get("A1111_PATH")
    a1111_python = a1111_python or os.environ.get("A1111_PYTHON")
    if not a1111_path or not a1111_python:
        raise RuntimeError("Building the SDXL test checkpoint needs A1111_PATH and A1111_PYTHON (its sgm classes); "
                           "tests/hosts/setup_hosts.py prepares both.")
    write_clip_l_folder(out / f"{NAME}-clip-l")
    env = {**os.environ, "PYTHONPATH": str(Path(a1111_path) / "repositories" / "generative-models")}
    subprocess.run([a1111_python, str(Path(__file__).resolve()), str(out)], check=True, env=env,
                   cwd=str(Path(__file__).resolve().parent))
    return ckpt


def link_into(models_dir: Path, ckpt: Path) -> Path:
    """Symlink the checkpoint and its ``.yaml`` into a webui's ``models/Stable-diffusion`` (A1111 reads the yaml
    named like the link); returns the linked checkpoint."""
    models_dir.mkdir(parents=True, exist_ok=True)
    link = models_dir / ckpt.name
    for src, dst in ((ckpt, link), (ckpt.with_suffix(".yaml"), link.with_suffix(".yaml"))):
        if not dst.exists():
            dst.symlink_to(src)
    return link


if __name__ == "__main__":
    target = Path(sys.argv[1])
    print(json.dumps({"checkpoint": str(build(target))}))
