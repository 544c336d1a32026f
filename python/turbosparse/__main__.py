"""`python -m turbosparse`: prints how to use the package and its commands."""
from __future__ import annotations

import sys
from typing import List, Optional

from . import __version__

HELP = f"""\
turbosparse {__version__}: fast inference for activation-sparse (dReLU / ReGLU) LLMs on ggml

Python:
    import turbosparse
    with turbosparse.Model("model.gguf", n_ctx=2048) as model:
        print(model.generate("The capital of France is", max_tokens=32, temperature=0))
        for piece in model.chat([{{"role": "user", "content": "Hi!"}}], stream=True):
            print(piece, end="", flush=True)
        print(model.stats)          # prompt / generation tokens per second, FFN density

    llama-cpp-python style: model.create_completion(prompt, ...) and
    model.create_chat_completion(messages, ...) return OpenAI-shaped dicts (or chunk streams).
    help(turbosparse.Model) lists every option.

Commands:
    ts-main -m model.gguf -p "Once upon a time" -n 64    generate from the command line
                                                          (ts-main --help for the flags)
    convert-turbosparse ./hf-checkpoint --outfile model.gguf --outtype q8_0
                                                          Hugging Face / PowerInfer -> GGUF
    python -m turbosparse.convert ...                     the same converter
    ts-server [-m model.gguf] --port 8080                 OpenAI-compatible HTTP server
                                                          (pip install 'turbosparse[server]')
"""


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("--version", "-V"):
        print(__version__)
        return 0
    unknown = [a for a in args if a not in ("-h", "--help")]
    print(HELP, end="", file=sys.stderr if unknown else sys.stdout)
    if unknown:
        print(f"\npython -m turbosparse: unknown arguments {' '.join(unknown)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
