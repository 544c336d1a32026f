"""The exceptions of the turbosparse Python API.

Every failure reported by the C library arrives as a TurboSparseError subclass carrying the
library's own message. Argument errors caught on the Python side (wrong type, value out of
range) are TypeError / ValueError as usual; the ones that name a runtime limit (token ids out of
the vocabulary, a prompt longer than the context) also derive from TurboSparseError so that a
single `except TurboSparseError` catches everything the runtime refuses.
"""
from __future__ import annotations


class TurboSparseError(Exception):
    """Base class of every error the turbosparse runtime reports."""


class ModelLoadError(TurboSparseError, OSError):
    """The model file cannot be loaded (missing, not a GGUF, truncated, unsupported)."""


class NoDefaultModelError(ModelLoadError, FileNotFoundError):
    """Model(path=None) was asked for the bundled default model, and none is installed."""


class ContextError(TurboSparseError):
    """The inference context cannot be created (bad n_ctx, FFN mode the file cannot run, ...)."""


class ContextFullError(TurboSparseError, ValueError):
    """The tokens would not fit in the context window (n_ctx)."""


class InvalidTokenError(TurboSparseError, ValueError):
    """A token id is outside the model's vocabulary."""


class DecodeError(TurboSparseError):
    """Running a batch through the model failed (graph allocation or compute)."""


class SamplingError(TurboSparseError, ValueError):
    """The sampler refused its parameters or the logits (NaN / +Inf)."""


class TokenizeError(TurboSparseError, ValueError):
    """The text cannot be tokenized (or ids cannot be turned back into text)."""


class ModelClosedError(TurboSparseError, ValueError):
    """The Model was closed; its methods cannot be used any more."""


class TemplateError(TurboSparseError, ValueError):
    """The chat template failed to render (or called raise_exception)."""
