"""Test-only ComfyUI node pack (copied into the e2e server's custom_nodes/ as ``reneg_e2e_probe/__init__.py``).

``ReNegE2EProbe`` passes a MODEL through with a UNet wrapper that records the negative ("uncond") and positive
("cond") conditioning the sampler actually feeds the UNet, and writes the first of each it sees to
``<output>/reneg_probe/<tag>.safetensors`` (with whether all uncond rows of the run were identical and the
MODEL's ComfyUI config and model_base classes, e.g. ``PixArtAlpha``), plus every row of that first call
(``negative_rows`` / ``positive_rows``: one per image of a latent batch) and, for SDXL, ComfyUI's adm input ``y``
of each (``negative_y`` / ``positive_y``: pooled + size/crop embedding; ``*_y_rows``: every row).

``ReNegE2ETinyPixArtT5`` is a CLIP for PixArt graphs without the 4.7B T5-XXL (which ComfyUI builds from a fixed
full-size config, ``comfy/text_encoders/t5_config_xxl.json``): ComfyUI's own PixArt tokenizer, T5 class and
PixArt text-encoder wrapper (``comfy.text_encoders.pixart_t5``: no padding, all-pad empty tokens) with a tiny
config (4096 wide, one layer) and seeded random weights, written to ``<output>/reneg_probe/tiny_t5.safetensors``
so the test can run the same weights through ``transformers``' T5 the way diffusers does.

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


class ReNegE2EProbe:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "tag": ("STRING", {"default": "probe"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, tag):
        out_dir = os.path.join(folder_paths.get_output_directory(), "reneg_probe")
        os.makedirs(out_dir, exist_ok=True)
        seen, positives, adm = [], [], {}

        def wrapper(apply_model, args):
            x, c, cou = args["input"], args["c"], args["cond_or_uncond"]
            ctx = c["c_crossattn"]
            rows = x.shape[0] // len(cou)
            for i, kind in enumerate(cou):
                rows_i = ctx[i * rows:(i + 1) * rows].detach().to("cpu").clone()
                (seen if kind == 1 else positives).append(rows_i)  # 1 = uncond = the negative
                name = "negative" if kind == 1 else "positive"
                if c.get("y") is not None and f"{name}_y" not in adm:  # SDXL's adm of the first call
                    adm[f"{name}_y_rows"] = c["y"][i * rows:(i + 1) * rows].detach().to("cpu").clone()
                    adm[f"{name}_y"] = adm[f"{name}_y_rows"][:1].clone()
            if seen:
                from safetensors.torch import save_file

                first = seen[0][:1].contiguous()
                same = all(torch.equal(s, first.expand_as(s)) for s in seen)
                tensors = {"negative": first.clone(), "negative_rows": seen[0].clone()}  # rows: a latent batch
                if positives:
                    tensors["positive"] = positives[0][:1].clone()
                    tensors["positive_rows"] = positives[0].clone()
                tensors.update({k: v.clone() for k, v in adm.items()})
                save_file(tensors, os.path.join(out_dir, f"{tag}.safetensors"),
                          metadata={"all_identical": str(same), "calls": str(len(seen)),
                                    "model_config": type(model.model.model_config).__name__,
                                    "model_base": type(model.model).__name__,
                                    "latent_hw": f"{x.shape[-2]},{x.shape[-1]}"})
            return apply_model(args["input"], args["timestep"], **c)

        patched = model.clone()
        patched.set_model_unet_function_wrapper(wrapper)
        return (patched,)


#: The tiny T5 (``comfy.text_encoders.t5.T5`` config keys); 4096 wide like T5-XXL, the real T5 vocabulary.
TINY_T5 = {"d_ff": 32, "d_kv": 8, "d_model": 4096, "num_heads": 2, "num_layers": 1, "vocab_size": 32128,
           "dense_act_fn": "gelu_pytorch_tanh", "is_gated_act": True, "model_type": "t5",
           "relative_attention_num_buckets": 32, "layer_norm_epsilon": 1e-6}


class ReNegE2ETinyPixArtT5:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "tooltip": "Seed of the random tiny T5 weights."})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, seed):
        import comfy.sd
        import comfy.sd1_clip as sd1
        import comfy.supported_models_base as smb
        import comfy.text_encoders.pixart_t5 as pixart_t5
        import comfy.text_encoders.t5
        from safetensors.torch import save_file

        class TinyT5(pixart_t5.T5XXLModel):  # keeps PixArt's gen_empty_tokens
            def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
                sd1.SDClipModel.__init__(self, device=device, layer="last", layer_idx=None,
                                         textmodel_json_config=dict(TINY_T5), dtype=dtype,
                                         special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                                         enable_attention_masks=False, return_attention_masks=False,
                                         model_options={**model_options, "model_name": "t5xxl"})

        class TinyPixArtTE(pixart_t5.PixArtT5XXL):
            def __init__(self, device="cpu", dtype=None, model_options={}):
                sd1.SD1ClipModel.__init__(self, device=device, dtype=dtype, name="t5xxl", clip_model=TinyT5,
                                          model_options=model_options)

        clip = comfy.sd.CLIP(smb.ClipTarget(pixart_t5.PixArtTokenizer, TinyPixArtTE),
                             model_options={"dtype": torch.float32})
        t5 = getattr(clip.cond_stage_model, clip.cond_stage_model.clip).transformer
        gen = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():  # ComfyUI's ops leave weights uninitialised
            for name, p in t5.named_parameters():
                p.copy_(torch.ones(p.shape) if "layer_norm" in name else torch.randn(p.shape, generator=gen) * 0.05)
        out_dir = os.path.join(folder_paths.get_output_directory(), "reneg_probe")
        os.makedirs(out_dir, exist_ok=True)
        save_file({k: v.detach().to("cpu").contiguous() for k, v in t5.state_dict().items()},
                  os.path.join(out_dir, "tiny_t5.safetensors"))
        return (clip,)


#: Overrides of ComfyUI's full-size CLIP-L / bigG configs: same widths (768, 1280), three layers (ComfyUI asserts |layer_idx -2| < layers), small MLPs.
TINY_L = {"num_hidden_layers": 3, "intermediate_size": 64}
TINY_G = {"num_hidden_layers": 3, "intermediate_size": 64}



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



NODE_CLASS_MAPPINGS = {"ReNegE2EProbe": ReNegE2EProbe, "ReNegE2ETinyPixArtT5": ReNegE2ETinyPixArtT5,
                       "ReNegE2ETinySDXLClip": ReNegE2ETinySDXLClip}
