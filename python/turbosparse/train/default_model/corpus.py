"""The bundled model's corpus: English text every CPython install carries.

- pydoc's topic pages (pydoc_data.topics: the language reference sections `help()` shows);
- the docstrings of the standard library's top-level modules and of their public classes,
  functions and methods, read from the running interpreter (in a child process, so that
  importing ~200 modules cannot disturb this one).

Documents are ordered by title; a document goes to the held-out split when a hash of its
title says so (about 1 in 20), so the split does not move when other documents come and go.
The same Python version gives the same corpus; pipeline reports carry its SHA-256.

Chat examples in ChatML (`<|im_start|>user ... <|im_end|>`) are made from the training
documents only: "What does X do?" answered by the first paragraph of X's docstring.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

# modules whose import has side effects (a browser, printing, GUI) or that only warn
_SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__", "xxsubtype",
                 "lib2to3", "pydoc_data", "ensurepip", "venv", "test", "msilib", "winreg", "winsound", "_winapi"}
HELD_OUT_EVERY = 20


@dataclass(frozen=True)
class Document:
    title: str
    text: str


_EXTRACT = r"""
import contextlib, importlib, inspect, io, json, sys, warnings
warnings.simplefilter("ignore")
skip = set(json.loads(sys.argv[1]))
docs = []

def add(title, obj, head):
    doc = inspect.getdoc(obj)
    if isinstance(doc, str) and doc.strip():
        docs.append([title, head + "\n\n" + doc.strip()])

def signature(name, obj):
    try:
        sig = name + str(inspect.signature(obj))
    except (TypeError, ValueError):
        return name
    # defaults whose repr is an address or the environment would make the corpus differ
    # from run to run and machine to machine
    local = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.executable}
    if " at 0x" in sig or "environ(" in sig or len(sig) > 200 or any(p in sig for p in local):
        return name + "(...)"
    return sig

for name in sorted(sys.stdlib_module_names):
    if name in skip or name.startswith("_"):
        continue
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            mod = importlib.import_module(name)
    except BaseException:
        continue
    add(name, mod, "Module " + name)
    for key, obj in sorted(vars(mod).items()):
        if key.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        full = name + "." + key
        add(full, obj, signature(full, obj))
        if inspect.isclass(obj):
            for mkey, member in sorted(vars(obj).items()):
                if mkey.startswith("_") or not (inspect.isroutine(member) or isinstance(member, property)):
                    continue
                add(full + "." + mkey, member, signature(full + "." + mkey, member))
json.dump(docs, sys.stdout)
"""


def topic_documents() -> list[Document]:
    from pydoc_data.topics import topics

    return [Document(f"topic:{key}", f"Topic {key}\n\n{text.strip()}") for key, text in sorted(topics.items())]


def docstring_documents(python: str = sys.executable) -> list[Document]:
    # a fixed, minimal environment: some defaults and docstrings are computed from it
    env = {"PATH": os.defpath, "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "HOME": "/nonexistent"}
    r = subprocess.run([python, "-I", "-c", _EXTRACT, json.dumps(sorted(_SKIP_MODULES))], capture_output=True,
                       text=True, timeout=900, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"docstring extraction failed: {r.stderr[-2000:]}")
    seen: set[str] = set()
    out = []
    for title, text in json.loads(r.stdout):
        if text in seen:  # aliases and re-exports repeat docstrings
            continue
        seen.add(text)
        out.append(Document(title, text))
    return out


def all_documents() -> list[Document]:
    return sorted(topic_documents() + docstring_documents(), key=lambda d: d.title)


def is_held_out(doc: Document) -> bool:
    return int(hashlib.sha256(doc.title.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def split(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    return [d for d in docs if not is_held_out(d)], [d for d in docs if is_held_out(d)]


def first_paragraph(text: str) -> str:
    body = text.split("\n\n", 1)[1] if "\n\n" in text else text
    return body.split("\n\n", 1)[0].strip()


def chat_examples(docs: list[Document], every: int = 4, limit: Optional[int] = None) -> list[str]:
    """ChatML conversations from docstrings of functions, classes and topics: about one
    document in `every` (chosen by a hash of its title) whose first paragraph is a sentence."""
    out = []
    for d in docs:
        answer = first_paragraph(d.text)
        if len(answer) < 40 or int(hashlib.sha256(b"chat" + d.title.encode()).hexdigest(), 16) % every != 0:
            continue
        if d.title.startswith("topic:"):
            question = f"Explain the Python topic {d.title[6:]}."
        elif "." in d.title:
            question = f"What does {d.title} do?"
        else:
            question = f"What is the Python module {d.title} for?"
        out.append(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n")
        if limit is not None and len(out) >= limit:
            break
    return out


def digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()
