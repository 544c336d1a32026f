"""A small Llama-architecture model with a dReLU FFN in plain torch, computing exactly what the
runtime computes for a "bamboo" checkpoint (SPEC §1, §3): RMSNorm, rotate_half RoPE, causal
grouped-query attention, y = W_down (relu(W_gate x) * relu(W_up x)), no biases, tied
embeddings. state_dict() names are the Hugging Face ones, so saving is a rename-free dump.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LlamaConfig:
    n_vocab: int
    n_embd: int = 256
    n_layer: int = 6
    n_head: int = 4
    n_head_kv: int = 4
    n_ff: int = 1024
    n_ctx: int = 512
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    dropout: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def hf_config(self) -> dict[str, Any]:
        """config.json of the "bamboo" (TurboSparse-Mistral) layout, SPEC §3."""
        return {
            "architectures": ["BambooForCausalLM"],
            "model_type": "bamboo",
            "hidden_act": "relu",
            "hidden_size": self.n_embd,
            "intermediate_size": self.n_ff,
            "num_hidden_layers": self.n_layer,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_head_kv,
            "max_position_embeddings": self.n_ctx,
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_theta,
            "sliding_window": None,
            "vocab_size": self.n_vocab,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_cache(cfg: LlamaConfig, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d))
    freqs = torch.outer(torch.arange(n, dtype=torch.float64, device=device), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().float(), emb.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, head_dim]; HF rotate_half."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        hd = cfg.head_dim
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * hd, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_head_kv * hd, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_head_kv * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * hd, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        c, hd = self.cfg, self.cfg.head_dim
        q = self.q_proj(x).view(B, T, c.n_head, hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, c.n_head_kv, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, c.n_head_kv, hd).transpose(1, 2)
        q, k = apply_rope(q, cos[:T], sin[:T]), apply_rope(k, cos[:T], sin[:T])
        if c.n_head_kv != c.n_head:
            k = k.repeat_interleave(c.n_head // c.n_head_kv, dim=1)
            v = v.repeat_interleave(c.n_head // c.n_head_kv, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             dropout_p=c.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, c.n_head * hd))


class DReluMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.n_ff, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.n_ff, bias=False)
        self.down_proj = nn.Linear(cfg.n_ff, cfg.n_embd, bias=False)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.gate_proj(x)) * F.relu(self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.rms_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.rms_eps)
        self.mlp = DReluMLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin))
        act = self.mlp.activation(self.post_attention_layernorm(x))
        return x + self.dropout(self.mlp.down_proj(act)), act


class Inner(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.n_vocab, cfg.n_embd)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.rms_eps)


class LlamaDRelu(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Inner(cfg)
        self._rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.apply(self._init)
        # GPT-2-style scaling of the residual-branch outputs keeps early training stable
        for block in self.model.layers:
            for w in (block.self_attn.o_proj.weight, block.mlp.down_proj.weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits [B, T, n_vocab], per-layer FFN activations [B, T, n_ff])."""
        T = tokens.shape[1]
        if self._rope is None or self._rope[0].shape[0] < T or self._rope[0].device != tokens.device:
            self._rope = rope_cache(self.cfg, max(T, self.cfg.n_ctx), tokens.device)
        cos, sin = self._rope
        x = self.model.embed_tokens(tokens)
        acts = []
        for block in self.model.layers:
            x, act = block(x, cos, sin)
            acts.append(act)
        logits = self.model.norm(x) @ self.model.embed_tokens.weight.T
        return logits, acts
