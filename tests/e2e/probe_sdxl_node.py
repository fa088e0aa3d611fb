"""Test-only ComfyUI nodes for the SDXL e2e (copied into the server's custom_nodes/ as
``reneg_e2e_probe_sdxl/__init__.py`` by tests/e2e/test_comfyui_sdxl_e2e.py).

``ReNegE2ESDXLProbe`` passes a MODEL through with a UNet wrapper that records, for the first sampler call, the
uncond ("negative") and cond ("positive") cross-attention context **and ComfyUI's adm input** ``y`` (pooled +
size/crop embedding, built by ``SDXL.encode_adm``), and the MODEL's config and ``model_base`` classes, to
``<output>/reneg_probe/<tag>.safetensors``.

``ReNegE2ETinySDXLClip`` is an SDXL CLIP without the full-size text encoders (ComfyUI builds SDXL's CLIP-L and
OpenCLIP-bigG from fixed configs, ``comfy/sd1_clip_config.json`` / ``comfy/clip_config_bigg.json``; bigG alone
is ~695M parameters): ComfyUI's own ``SDXLTokenizer`` and ``SDXLClipModel`` (penultimate states of both,
concatenated to 2048; bigG's projected pooled output, 1280) made small through the ``clip_l_model_config`` /
``clip_g_model_config`` model options ComfyUI's ``SDClipModel`` reads (three layers each, same widths), with
seeded random weights.
"""
import os

import torch

import folder_paths

#: Overrides of ComfyUI's full-size CLIP-L / bigG configs: same widths (768, 1280), three layers (ComfyUI asserts |layer_idx -2| < layers), small MLPs.
TINY_L = {"num_hidden_layers": 3, "intermediate_size": 64}
TINY_G = {"num_hidden_layers": 3, "intermediate_size": 64}


def _out_dir() -> str:
    path = os.path.join(folder_paths.get_output_directory(), "reneg_probe")
    os.makedirs(path, exist_ok=True)
    return path


class ReNegE2ESDXLProbe:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "tag": ("STRING", {"default": "probe"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, tag):
        out_dir = _out_dir()
        done = []

        def wrapper(apply_model, args):
            x, c, cou = args["input"], args["c"], args["cond_or_uncond"]
            if not done:
                from safetensors.torch import save_file

                rows = x.shape[0] // len(cou)
                tensors = {}
                for i, kind in enumerate(cou):
                    name = "negative" if kind == 1 else "positive"  # 1 = uncond = the negative
                    tensors[name] = c["c_crossattn"][i * rows:(i + 1) * rows][:1].detach().to("cpu").clone()
                    tensors[f"{name}_y"] = c["y"][i * rows:(i + 1) * rows][:1].detach().to("cpu").clone()
                save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, f"{tag}.safetensors"),
                          metadata={"model_config": type(model.model.model_config).__name__,
                                    "model_base": type(model.model).__name__,
                                    "latent_hw": f"{x.shape[-2]},{x.shape[-1]}"})
                done.append(True)
            return apply_model(args["input"], args["timestep"], **c)

        patched = model.clone()
        patched.set_model_unet_function_wrapper(wrapper)
        return (patched,)


class ReNegE2ETinySDXLClip:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "tooltip": "Seed of the random tiny encoders."})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, seed):
        import comfy.sd
        import comfy.sdxl_clip as sdxl_clip
        import comfy.supported_models_base as smb

        clip = comfy.sd.CLIP(smb.ClipTarget(sdxl_clip.SDXLTokenizer, sdxl_clip.SDXLClipModel),
                             model_options={"dtype": torch.float32, "clip_l_model_config": dict(TINY_L),
                                            "clip_g_model_config": dict(TINY_G)})
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():  # ComfyUI's ops leave weights uninitialised
            for name, p in clip.cond_stage_model.named_parameters():
                if "layer_norm" in name:
                    p.copy_(torch.ones(p.shape) if name.endswith("weight") else torch.zeros(p.shape))
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        return (clip,)


NODE_CLASS_MAPPINGS = {"ReNegE2ESDXLProbe": ReNegE2ESDXLProbe, "ReNegE2ETinySDXLClip": ReNegE2ETinySDXLClip}
