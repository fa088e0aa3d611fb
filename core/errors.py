"""User-facing errors: one clear message naming the problem and the fix."""
from __future__ import annotations


class RenegError(Exception):
    """An error a user can act on (bad file, wrong model family, missing weights, ...)."""


class IncompatibleEmbeddingError(RenegError):
    """The negative embedding does not fit the model's text-encoder family."""


class UnsafeFileError(RenegError):
    """A file tried to execute code on load (pickle) or is not a plain tensor file."""


class CorruptFileError(RenegError):
    """A file is truncated, empty, of the wrong kind (HTML page, Git-LFS pointer, text) or otherwise unreadable:
    a broken download or a wrong path, not a dangerous file."""


class FileTooLargeError(RenegError):
    """A file or a tensor it declares exceeds a size limit (checked before anything is read into memory)."""


class MissingWeightsError(RenegError):
    """Model or reward weights are not available locally and cannot be downloaded."""


class ImageSizeError(RenegError, ValueError):
    """An image height/width the model cannot produce (not a multiple of the VAE's downscale factor)."""


class OutputError(RenegError):
    """An output path that must not be written: it exists (no overwrite flag), is an input, a folder, or busy."""


class OutputBusyError(OutputError):
    """Another run holds the lock on this output."""


class WriteError(RenegError):
    """Writing an output failed (disk full, permission denied, read-only file system); nothing was replaced."""


class NonFiniteError(RenegError):
    """A computation produced NaN/Inf (or values that overflow): the result would be garbage, so none is saved."""


class NothingLearnedError(RenegError):
    """A training run finished without a single applied update."""
