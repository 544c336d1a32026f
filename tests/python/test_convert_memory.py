"""Streaming: converting a ~2 GB checkpoint peaks at (baseline) + a few times the largest tensor.

The converter runs in a child process that reports its own peak RSS (VmHWM, Linux). The baseline
is the same command on a tiny model: the interpreter, numpy, gguf, sentencepiece and the
vocabulary. The allowance per tensor is 4x its float32 size: while one tensor is in flight the
converter holds its float32 copy (1x), a rearranged copy for permuted/transposed tensors (1x),
the encoded output (0.5x for f16), and the source bytes while they are mapped (up to 1x for an
f32 source), plus a constant for chunked encoding temporaries and allocator slack (64 MiB).
A converter that kept the model in memory would need over 2 GB, eight times this bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from hf_fixtures import tiny_config, write_safetensors_lazy, write_tiny_checkpoint, write_tokenizer

MiB = 1 << 20

# Report the child's own peak RSS on the last line of stdout. VmHWM belongs to the address
# space made by exec; ru_maxrss would not do, as Linux carries the parent's (pytest's) peak
# across fork and exec into it.
_RUNNER = """
import runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as e:
    code = e.code or 0
with open("/proc/self/status") as f:
    hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
print("PEAK_RSS_KB", hwm, flush=True)
sys.exit(code)
"""


def _script() -> Path:
    return Path(__file__).resolve().parents[2] / "convert" / "convert-turbosparse.py"


def run_measured(*args: str) -> tuple[int, str]:
    res = subprocess.run([sys.executable, "-c", _RUNNER, str(_script()), *args, "--quiet"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1].split()
    assert last[0] == "PEAK_RSS_KB"
    return int(last[1]) * 1024, res.stdout


def write_big_checkpoint(folder: Path) -> tuple[int, int]:
    """An f32 bamboo checkpoint of about 2 GB in two shards, written one tensor at a time.
    Returns (total bytes of the safetensors, bytes of its largest tensor)."""
    folder.mkdir(parents=True)
    config = tiny_config("bamboo", n_layer=11, n_embd=2048, n_ff=5632, n_head=16, n_head_kv=4)
    (folder / "config.json").write_text(json.dumps(config))
    write_tokenizer(folder, config)
    n_embd, n_ff, n_vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = n_embd // 16 * 4
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (n_vocab, n_embd)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes.update({
            f"{p}.input_layernorm.weight": (n_embd,),
            f"{p}.self_attn.q_proj.weight": (n_embd, n_embd),
            f"{p}.self_attn.k_proj.weight": (kv, n_embd),
            f"{p}.self_attn.v_proj.weight": (kv, n_embd),
            f"{p}.self_attn.o_proj.weight": (n_embd, n_embd),
            f"{p}.post_attention_layernorm.weight": (n_embd,),
            f"{p}.mlp.gate_proj.weight": (n_ff, n_embd),
            f"{p}.mlp.up_proj.weight": (n_ff, n_embd),
            f"{p}.mlp.down_proj.weight": (n_embd, n_ff),
        })
    shapes["model.norm.weight"] = (n_embd,)
    shapes["lm_head.weight"] = (n_vocab, n_embd)
    block = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32) * 0.02

    def make(name: str, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        return np.resize(block, n).reshape(shape)  # repeats the random block; finite, cheap

    names = list(shapes)
    half = len(names) // 2
    total = 0
    weight_map = {}
    for k, part in enumerate((names[:half], names[half:])):
        shard = f"model-{k + 1:05d}-of-00002.safetensors"
        total += write_safetensors_lazy(folder / shard, {n: shapes[n] for n in part}, make)
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    largest = max(int(np.prod(s)) * 4 for s in shapes.values())
    return total, largest


def test_peak_rss_bounded_by_largest_tensor(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny"
    write_tiny_checkpoint(tiny, arch="bamboo", dtype="f32")
    baseline, _ = run_measured(str(tiny), "--outfile", str(tmp_path / "tiny.gguf"), "--no-predictor")

    big = tmp_path / "big"
    total, largest = write_big_checkpoint(big)
    assert total > 1.9e9
    out = tmp_path / "big.gguf"
    peak, _ = run_measured(str(big), "--outfile", str(out), "--outtype", "f16", "--no-predictor")
    assert out.stat().st_size > total // 2 * 0.99  # every tensor was written, as f16

    bound = baseline + 4 * largest + 64 * MiB
    print(f"checkpoint {total / MiB:.0f} MiB, largest tensor {largest / MiB:.0f} MiB, "
          f"baseline {baseline / MiB:.0f} MiB, peak {peak / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB")
    assert peak <= bound
    assert bound < total / 4  # the bound means something: far below holding the model
