"""Weight rearrangements between Hugging Face layouts and the ones ggml reads."""

from __future__ import annotations

import numpy as np


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the rows of a q_proj/k_proj weight [n_head*head_dim, n_embd] for ggml's RoPE.

    HF Llama rotates pairs (j, j + head_dim/2) of each head ("rotate_half"); ggml's normal
    RoPE (mode 0) rotates adjacent pairs (2j, 2j+1). Interleaving the two halves of each head
    makes the second compute the first. Exactly llama.cpp's convert_hf_to_gguf.py permute;
    pass n_head_kv for k_proj.
    """
    rows = w.shape[0]
    if rows % (2 * n_head) != 0:
        raise ValueError(f"{rows} rows do not split into {n_head} heads of even size")
    return np.ascontiguousarray(
        w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def neuron_major(w_down: np.ndarray) -> np.ndarray:
    """HF down_proj [n_embd, n_ff] -> [n_ff, n_embd]: row i is neuron i's output vector."""
    return np.ascontiguousarray(w_down.T)
