"""TOY WORLD: a small *trained* text-to-image world shipped with the pack, for demos and tests -- not for art.

32x32 scenes of one coloured shape (``data.py``), two Stable-Diffusion-architecture generators ``toy`` and
``toy-2`` (diffusers ``AutoencoderKL`` + ``UNet2DConditionModel`` + transformers ``CLIPTextModel`` on the openai
CLIP tokenizer; they share the text encoder and VAE) and the ``toy`` reward, a small open_clip CLIP trained to
prefer correct, defect-free images for their caption (a toy HPSv2.1). Weights: ``weights/*.safetensors``,
rebuilt by ``python -m reneg.core.toy_world.train_world``. Load with ``--model toy`` / ``--reward toy``.
"""
from .load import TOY_MODELS, load_toy_backend, load_toy_reward, toy_components

__all__ = ["TOY_MODELS", "load_toy_backend", "load_toy_reward", "toy_components"]
