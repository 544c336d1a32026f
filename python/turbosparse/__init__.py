"""turbosparse: fast inference for activation-sparse (dReLU / ReGLU) LLMs on ggml.

Importing the package loads nothing native: the converter (turbosparse.convert) is pure
Python. The native library is opened on first use of turbosparse._lib.load() (directly or
through turbosparse._ggml).
"""
__version__ = "0.1.0"


def isa() -> str:
    """The kernel table the native library uses on this CPU ("scalar", "avx2", "avx512", "neon")."""
    from ._ggml import isa as _isa

    return _isa()


# The Python API (model.py opens the native library), loaded on first use of a name.
_LAZY = {
    "Model": "model", "Stats": "model", "default_model_path": "model",
    "render_chat": "chat",
    "TurboSparseError": "errors", "ModelLoadError": "errors", "NoDefaultModelError": "errors",
    "ContextError": "errors", "ContextFullError": "errors", "InvalidTokenError": "errors",
    "DecodeError": "errors", "SamplingError": "errors", "TokenizeError": "errors",
    "ModelClosedError": "errors", "TemplateError": "errors",
}


def __getattr__(name: str):  # PEP 562
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'turbosparse' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
