"""Test-only ComfyUI node pack (copied into the e2e server's custom_nodes/ as ``reneg_e2e_probe/__init__.py``).

``ReNegE2EProbe`` passes a MODEL through with a UNet wrapper that records the negative ("uncond") and positive
("cond") conditioning the sampler actually feeds the UNet, and writes the first of each it sees to
``<output>/reneg_probe/<tag>.safetensors`` (with whether all uncond rows of the run were identical), plus every
row of that first call (``negative_rows`` / ``positive_rows``: one per image of a latent batch).
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
        seen, positives = [], []

        def wrapper(apply_model, args):
            x, c, cou = args["input"], args["c"], args["cond_or_uncond"]
            ctx = c["c_crossattn"]
            rows = x.shape[0] // len(cou)
            for i, kind in enumerate(cou):
                rows_i = ctx[i * rows:(i + 1) * rows].detach().to("cpu").clone()
                (seen if kind == 1 else positives).append(rows_i)  # 1 = uncond = the negative
            if seen:
                from safetensors.torch import save_file

                first = seen[0][:1].contiguous()
                same = all(torch.equal(s, first.expand_as(s)) for s in seen)
                tensors = {"negative": first.clone(), "negative_rows": seen[0].clone()}  # rows: a latent batch
                if positives:
                    tensors["positive"] = positives[0][:1].clone()
                    tensors["positive_rows"] = positives[0].clone()
                save_file(tensors, os.path.join(out_dir, f"{tag}.safetensors"),
                          metadata={"all_identical": str(same), "calls": str(len(seen))})
            return apply_model(args["input"], args["timestep"], **c)

        patched = model.clone()
        patched.set_model_unet_function_wrapper(wrapper)
        return (patched,)


NODE_CLASS_MAPPINGS = {"ReNegE2EProbe": ReNegE2EProbe}
