"""convert-turbosparse: Hugging Face checkpoints and PowerInfer GGUF files to turbosparse GGUF.

Pure Python (numpy, gguf, safetensors-format reading of our own): never loads the native
library, so it runs on any machine that can hold the largest tensor of the model.
"""

from .errors import ConvertError

__all__ = ["ConvertError"]
