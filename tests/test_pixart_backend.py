"""PixArt-α boundary on ``tiny-pixart``: the mask evidence, T5 encoding, transformer call, loading, family errors."""
from __future__ import annotations

import pytest
import torch

from reneg.core.embedding_io import check_compatible, load_embedding
from reneg.core.errors import IncompatibleEmbeddingError, MissingWeightsError, RenegError
from reneg.core.pixart_backend import PixArtBackend, apply_mask, attention_mask_of, mask_metadata

EMPTY_MASK = "1" + "0" * 119


@pytest.fixture(scope="module")
def pixart():
    from reneg.core.tiny_pixart import load_tiny_pixart_backend

    return load_tiny_pixart_backend()


@pytest.fixture(scope="module")
def released_pixart(released_dir):
    return load_embedding(released_dir / "pixart-alpha_reneg_emb.bin").tensor


def test_released_tensor_has_the_empty_prompt_layout(released_pixart):
    t = released_pixart[0]
    assert released_pixart.shape == (1, 120, 4096)
    assert all(torch.equal(t[1], t[i]) for i in range(2, 120))  # rows 1..119 bitwise identical
    assert not torch.equal(t[0], t[1]) and t[1].abs().sum() > 0
    assert attention_mask_of(released_pixart).tolist() == [[True] + [False] * 119]
    assert mask_metadata(released_pixart) == EMPTY_MASK


def test_t5_gives_that_layout_only_for_the_empty_prompt_under_its_mask(pixart):
    """Identical padded rows arise in T5 exactly when one token (``</s>`` of "") is attended."""
    pipe = pixart.pipeline()
    tok = pixart.tokenizer([""], padding="max_length", max_length=120, return_tensors="pt")
    assert tok.input_ids[0, 0] == pixart.tokenizer.eos_token_id and tok.attention_mask.sum() == 1
    with torch.no_grad():
        masked = pixart.text_encoder(tok.input_ids, attention_mask=tok.attention_mask)[0][0]
        full = pixart.text_encoder(tok.input_ids, attention_mask=torch.ones_like(tok.attention_mask))[0][0]
    assert all(torch.equal(masked[1], masked[i]) for i in range(2, 120))
    assert len({tuple(r.tolist()) for r in full}) == 120  # all-ones mask: every row differs
    # the pipeline's own negative for "" has that layout and the mask our rule recovers from it
    _, _, neg, neg_mask = pipe.encode_prompt("a cat", negative_prompt="", clean_caption=False)
    assert attention_mask_of(neg).long().tolist() == neg_mask.tolist()
    # a prompt's padded rows differ (several attended tokens): only zeroed rows mark its padding
    emb, mask, _, _ = pipe.encode_prompt("a fox in the snow", do_classifier_free_guidance=False, clean_caption=False)
    assert attention_mask_of(emb).all() and not attention_mask_of(emb * mask[..., None]).all()


def test_encode_prompts_zeroes_padding_caches_and_offloads(pixart):
    pipe = pixart.pipeline()
    ours = pixart.encode_prompts(["a fox in the snow", ""])
    emb, mask, _, _ = pipe.encode_prompt(["a fox in the snow", ""], do_classifier_free_guidance=False,
                                         clean_caption=False)
    assert ours.shape == (2, 120, 4096)
    assert attention_mask_of(ours).long().tolist() == mask.tolist() == [[1] * 6 + [0] * 114, [1] + [0] * 119]
    assert torch.equal(ours, emb * mask[..., None])
    assert "a fox in the snow" in pixart._prompt_cache and pixart.text_encoder.device.type == "cpu"
    assert torch.equal(pixart.encode_prompts(["a fox in the snow"])[0], ours[0])


def test_attention_mask_rules():
    x = torch.randn(2, 120, 8)
    x[0, 5:] = 0                        # zero rows: not attended
    x[1, 1:] = x[1, 1]                  # identical rows 1..: the empty prompt's layout
    assert attention_mask_of(x).sum(-1).tolist() == [5, 1]
    assert attention_mask_of(torch.zeros(1, 120, 8)).sum() == 1  # never an all-masked softmax
    assert torch.equal(apply_mask(x[:1], "1" * 5 + "0" * 115), x[:1])
    with pytest.raises(RenegError, match="120 tokens"):
        apply_mask(x[:1], "11")


def test_model_output_is_the_masked_transformer_eps_half_with_resolution_conditions(pixart, released_pixart):
    latents = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    assert pixart.transformer.use_additional_conditions and pixart.learned_sigma
    cond = pixart.added_conditions(latents)
    assert cond["resolution"].tolist() == [[64.0, 96.0]]
    assert torch.equal(cond["aspect_ratio"], torch.tensor([[64 / 96]]))
    with torch.no_grad():
        ours = pixart.model_output(latents, 500, released_pixart)
        raw = pixart.transformer(latents, encoder_hidden_states=released_pixart,
                                 encoder_attention_mask=torch.tensor([[1] + [0] * 119]),
                                 timestep=torch.tensor([500]), added_cond_kwargs=cond, return_dict=False)[0]
        unmasked = pixart.transformer(latents, encoder_hidden_states=released_pixart, timestep=torch.tensor([500]),
                                      added_cond_kwargs=cond, return_dict=False)[0]
    assert raw.shape[1] == 8 and ours.shape == (1, 4, 8, 12)
    assert torch.equal(ours, raw[:, :4])
    assert (ours - unmasked[:, :4]).abs().max() > 1e-4  # the mask matters
    assert pixart.prediction_type == "epsilon" and pixart.context_dim == 4096


def test_family_errors(pixart, tiny_backend, released_dir, released_pixart):
    sd15 = load_embedding(released_dir / "sd1.5_reneg_emb.bin").tensor
    with pytest.raises(IncompatibleEmbeddingError, match=r"768-wide .*expects 4096-wide"):
        check_compatible(sd15, pixart.context_dim)
    with pytest.raises(IncompatibleEmbeddingError, match=r"4096-wide .*PixArt.*expects 768-wide.*PixArt-α model"):
        check_compatible(released_pixart, tiny_backend.context_dim)


def test_load_folder_and_offline_hub_id(tmp_path, pixart, monkeypatch):
    from reneg.core.diffusers_backend import load_backend
    from reneg.core.tiny_pixart import save_tiny_pixart_pipeline

    folder = save_tiny_pixart_pipeline(tmp_path / "pixart")
    loaded = load_backend(str(folder))
    assert isinstance(loaded, PixArtBackend) and loaded.context_dim == 4096
    assert torch.equal(loaded.alphas_cumprod, pixart.alphas_cumprod)
    a = next(iter(loaded.transformer.state_dict().values()))
    assert torch.equal(a, next(iter(pixart.transformer.state_dict().values())))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="PixArt-α model 'PixArt-alpha/PixArt-XL-2-512x512'.*tiny-pixart"):
        load_backend("PixArt-alpha/PixArt-XL-2-512x512")
    with pytest.raises(RenegError, match="PixArt-Σ"):
        load_backend("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS")
