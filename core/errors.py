"""User-facing errors: one clear message naming the problem and the fix."""
from __future__ import annotations


class RenegError(Exception):
    """An error a user can act on (bad file, wrong model family, missing weights, ...)."""


class IncompatibleEmbeddingError(RenegError):
    """The negative embedding does not fit the model's text-encoder family."""


class UnsafeFileError(RenegError):
    """A file tried to execute code on load (pickle) or is not a plain tensor file."""


class MissingWeightsError(RenegError):
    """Model or reward weights are not available locally and cannot be downloaded."""


class ImageSizeError(RenegError, ValueError):
    """An image height/width the model cannot produce (not a multiple of the VAE's downscale factor)."""
