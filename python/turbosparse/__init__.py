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
