"""The on_cfg_denoiser replacement (pure logic, no webui): tensor and dict uncond, broadcast, dtype/device,
width mismatch, gating, strength."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from reneg.a1111_extension.uncond import (PLAN_ATTR, UncondPlan, apply_to_params, attach, plan_for,
                                          replace_uncond)


class DictWithShape(dict):
    """Same shape as A1111's ``modules.prompt_parser.DictWithShape`` (v1.10): a dict whose .shape is crossattn's."""

    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def _neg(rows=1, tokens=77, dim=768, seed=0):
    return torch.randn(rows, tokens, dim, generator=torch.Generator().manual_seed(seed))


def _params(p, uncond, cond=None):
    """What A1111 passes to on_cfg_denoiser callbacks: CFGDenoiserParams(x, ..., text_cond, text_uncond, denoiser)."""
    return SimpleNamespace(x=None, image_cond=None, sigma=None, sampling_step=0, total_sampling_steps=20,
                           text_cond=cond, text_uncond=uncond, denoiser=SimpleNamespace(p=p))


def test_tensor_uncond_is_replaced_and_broadcast_without_touching_the_original():
    neg = _neg()
    plan = UncondPlan(neg, name="x")
    uncond = torch.randn(3, 77, 768)
    before = uncond.clone()
    out = replace_uncond(uncond, plan)
    assert out.shape == (3, 77, 768) and out is not uncond
    for row in out:
        torch.testing.assert_close(row, neg[0])
    torch.testing.assert_close(uncond, before)  # A1111's conds are never mutated
    out.add_(1)  # and the result does not alias the plan's tensor
    torch.testing.assert_close(replace_uncond(uncond, plan)[0], neg[0])
    assert plan.applied == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtype_follows_uncond(dtype):
    plan = UncondPlan(_neg())
    out = replace_uncond(torch.zeros(2, 77, 768, dtype=dtype), plan)
    assert out.dtype == dtype
    torch.testing.assert_close(out[1].float(), plan.negative[0].to(dtype).float())


def test_device_follows_uncond():
    plan = UncondPlan(_neg())
    out = replace_uncond(torch.empty(2, 77, 768, device="meta", dtype=torch.float16), plan)
    assert out.device.type == "meta" and out.dtype == torch.float16 and out.shape == (2, 77, 768)
    assert plan.negative.device.type == "cpu"  # the plan keeps its fp32 CPU copy


def test_per_row_negatives_and_unbroadcastable_rows():
    per_row = _neg(rows=2)
    plan = UncondPlan(per_row)
    out = replace_uncond(torch.zeros(2, 77, 768), plan)
    torch.testing.assert_close(out, per_row)
    messages = []
    uncond = torch.zeros(3, 77, 768)
    assert replace_uncond(uncond, plan, warn=messages.append) is uncond
    assert len(messages) == 1 and "cannot broadcast" in messages[0]


def test_width_mismatch_is_a_noop_with_one_warning():
    plan = UncondPlan(_neg(dim=768), name="sd15-neg")
    messages = []
    uncond = torch.zeros(1, 77, 1024)  # an SD2.x model
    for _ in range(3):  # every sampling step
        assert replace_uncond(uncond, plan, warn=messages.append) is uncond
    assert len(messages) == 1 and "768-wide" in messages[0] and "1024-wide" in messages[0]
    assert "sd15-neg" in messages[0] and plan.applied == 0


def test_dict_uncond_keeps_vector_and_class():
    plan = UncondPlan(_neg(dim=2048))
    vector = torch.randn(2, 2816)
    uncond = DictWithShape({"crossattn": torch.zeros(2, 77, 2048, dtype=torch.float16), "vector": vector})
    out = replace_uncond(uncond, plan)
    assert type(out) is DictWithShape and out is not uncond
    assert out["vector"] is vector and out.shape == (2, 77, 2048)
    assert out["crossattn"].dtype == torch.float16
    torch.testing.assert_close(out["crossattn"][1].float(), plan.negative[0].half().float())
    assert uncond["crossattn"].abs().sum() == 0  # original dict untouched


def test_sdxl_dict_with_sd1_embedding_is_left_alone():
    plan = UncondPlan(_neg(dim=768))
    messages = []
    uncond = DictWithShape({"crossattn": torch.zeros(1, 77, 2048), "vector": torch.zeros(1, 2816)})
    assert replace_uncond(uncond, plan, warn=messages.append) is uncond
    assert len(messages) == 1
    bad = {"vector": torch.zeros(1, 2816)}
    assert replace_uncond(bad, plan, warn=messages.append) is bad and "crossattn" in messages[-1]


def _sdxl_pair(rows=1, seed=0):
    from reneg.core.sdxl_backend import pack

    g = torch.Generator().manual_seed(seed)
    return pack(torch.randn(rows, 77, 2048, generator=g), torch.randn(rows, 1280, generator=g))


def test_sdxl_pair_fills_crossattn_and_pooled_and_keeps_the_size_embedding():
    """A1111/Forge SDXL uncond ``{'crossattn': [B,77,2048], 'vector': [B,2816]}``: the context replaces crossattn, the
    pooled part vector[:, :1280]; vector[:, 1280:] (the webui's size/crop embedding for this image) is untouched."""
    packed = _sdxl_pair()
    plan = UncondPlan(packed)
    vector = torch.randn(2, 2816).half()
    uncond = DictWithShape({"crossattn": torch.zeros(2, 154, 2048, dtype=torch.float16), "vector": vector})
    keep = vector.clone()
    out = replace_uncond(uncond, plan)
    assert type(out) is DictWithShape and out is not uncond and plan.applied == 1
    assert out["crossattn"].shape == (2, 77, 2048) and out["crossattn"].dtype == torch.float16
    assert out["vector"].shape == (2, 2816) and out["vector"].dtype == torch.float16
    for row in range(2):
        assert torch.equal(out["crossattn"][row], packed[0, :77].half())
        assert torch.equal(out["vector"][row, :1280], packed[0, 77, :1280].half())
    assert torch.equal(out["vector"][:, 1280:], keep[:, 1280:])
    assert torch.equal(vector, keep) and uncond["crossattn"].abs().sum() == 0  # the webui's dict is untouched


def test_sdxl_pair_per_row_and_strength():
    packed = _sdxl_pair(rows=2, seed=1)
    cross, vector = torch.randn(2, 77, 2048), torch.randn(2, 2816)
    out = replace_uncond({"crossattn": cross, "vector": vector}, UncondPlan(packed, strength=0.25))
    torch.testing.assert_close(out["crossattn"], 0.75 * cross + 0.25 * packed[:, :77])
    torch.testing.assert_close(out["vector"][:, :1280], 0.75 * vector[:, :1280] + 0.25 * packed[:, 77, :1280])
    assert torch.equal(out["vector"][:, 1280:], vector[:, 1280:])
    zero = replace_uncond({"crossattn": cross, "vector": vector}, UncondPlan(packed, strength=0.0))
    assert torch.equal(zero["crossattn"], cross) and torch.equal(zero["vector"], vector)


def test_sdxl_pair_that_cannot_apply_is_a_noop_with_one_warning():
    messages = []
    plan = UncondPlan(_sdxl_pair())
    no_vector = {"crossattn": torch.zeros(1, 77, 2048)}
    assert replace_uncond(no_vector, plan, warn=messages.append) is no_vector
    assert len(messages) == 1 and "vector" in messages[0]
    sd1 = torch.zeros(1, 77, 768)  # an SDXL file on an SD1 model: width mismatch
    assert replace_uncond(sd1, plan, warn=messages.append) is sd1 and "2048-wide" in messages[-1]
    three = {"crossattn": torch.zeros(3, 77, 2048), "vector": torch.zeros(3, 2816)}
    assert replace_uncond(three, UncondPlan(_sdxl_pair(rows=2)), warn=messages.append) is three
    assert "cannot broadcast" in messages[-1] and plan.applied == 0


def test_none_uncond_forge_cfg1():
    assert replace_uncond(None, UncondPlan(_neg())) is None


def test_long_negative_prompt_keeps_embedding_length():
    """A 2-chunk (154-token) uncond becomes the 77-token negative; A1111 pads or batches cond/uncond itself."""
    out = replace_uncond(torch.zeros(1, 154, 768), UncondPlan(_neg()))
    assert out.shape == (1, 77, 768)


def test_strength_blends_with_the_original_uncond():
    neg = _neg()
    uncond = torch.randn(2, 154, 768)
    half = replace_uncond(uncond, UncondPlan(neg, strength=0.5))
    torch.testing.assert_close(half, 0.5 * uncond[:, :77] + 0.5 * neg.expand(2, -1, -1))
    zero = replace_uncond(uncond, UncondPlan(neg, strength=0.0))
    torch.testing.assert_close(zero, uncond[:, :77])


def test_gating_on_the_processing_object():
    plan = UncondPlan(_neg())
    p_ours, p_other = SimpleNamespace(), SimpleNamespace()
    attach(p_ours, plan)
    assert plan_for(_params(p_ours, None)) is plan and plan_for(_params(p_other, None)) is None

    ours = _params(p_ours, torch.zeros(1, 77, 768))
    assert apply_to_params(ours) is True
    torch.testing.assert_close(ours.text_uncond[0], plan.negative[0])

    other_uncond = torch.zeros(1, 77, 768)
    other = _params(p_other, other_uncond)  # another generation (other tab, API call, other user)
    assert apply_to_params(other) is False and other.text_uncond is other_uncond

    no_denoiser = SimpleNamespace(text_uncond=other_uncond)  # params from an older/foreign caller
    assert apply_to_params(no_denoiser) is False

    setattr(p_other, PLAN_ATTR, "not a plan")  # foreign junk under our attribute name is ignored
    assert plan_for(_params(p_other, None)) is None

    attach(p_ours, None)
    assert not hasattr(p_ours, PLAN_ATTR)
    again = _params(p_ours, other_uncond)
    assert apply_to_params(again) is False


def test_every_step_and_every_pass_is_replaced():
    """The callback fires per step, for the first pass and the hires pass (a new denoiser, same p)."""
    plan = UncondPlan(_neg())
    p = SimpleNamespace()
    attach(p, plan)
    for _pass in range(2):
        for _step in range(5):
            params = _params(p, torch.zeros(2, 77, 768, dtype=torch.float16))
            assert apply_to_params(params)
    assert plan.applied == 10
