"""python/turbosparse/cdef/{tokenizer,sampler}.h repeat the C headers' declarations for cffi's
ABI mode (which cannot parse the real headers): each must declare exactly what its header
declares, so a changed struct field or parameter in C cannot silently go stale in Python.
(cdef/runtime.h against turbosparse.h: tests/python/test_runtime.py.)"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAIRS = {"tokenizer.h": "ggml_sparse/runtime/tokenizer.h", "sampler.h": "ggml_sparse/runtime/sampler.h"}


def cdef_dir() -> Path:
    """The installed package's declarations (what cffi reads), else the source tree's."""
    try:
        import turbosparse

        return Path(list(turbosparse.__path__)[0]) / "cdef"
    except ImportError:
        return ROOT / "python" / "turbosparse" / "cdef"


def declarations(text: str) -> Counter:
    """The top-level declarations (comments, preprocessor lines and the C++ extern "C" guard
    dropped, whitespace normalised), each a string ending before its ';'."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"#ifdef __cplusplus.*?#endif", "", text, flags=re.S)
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    out: Counter = Counter()
    depth, start = 0, 0
    for i, ch in enumerate(text):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == ";" and depth == 0:
            decl = re.sub(r"\s+", " ", text[start:i]).strip()
            decl = re.sub(r"\s*([(){},*\[\]=])\s*", r"\1", decl)
            if decl:
                out[decl] += 1
            start = i + 1
    assert not re.sub(r"\s", "", text[start:]), f"text after the last declaration: {text[start:]!r}"
    return out


def header_defines(text: str) -> dict:
    return dict(re.findall(r"^#define\s+(\w+)\s+(.+?)\s*$", text, flags=re.M))


@pytest.mark.parametrize("cdef_name", sorted(PAIRS))
def test_cdef_declares_what_the_header_declares(cdef_name):
    header = declarations((ROOT / PAIRS[cdef_name]).read_text())
    cdef = declarations((cdef_dir() / cdef_name).read_text())
    stale = cdef - header
    assert not stale, f"cdef/{cdef_name} declares what {PAIRS[cdef_name]} does not: {sorted(stale)}"
    # a forward declaration may be left out: cffi takes a pointer to an unknown struct as opaque
    missing = [d for d in header - cdef if not re.fullmatch(r"struct \w+", d)]
    assert not missing, f"cdef/{cdef_name} lacks {PAIRS[cdef_name]}'s {missing}"


def test_header_constants_mirrored_in_python():
    """The headers' #define constants cffi cannot see are repeated as Python constants."""
    from turbosparse import _tokenizer

    defines = {**header_defines((ROOT / PAIRS["tokenizer.h"]).read_text()),
               **header_defines((ROOT / PAIRS["sampler.h"]).read_text())}
    assert defines == {"TS_TOKENIZE_ERROR": "INT32_MIN"}, "a new #define: mirror it in Python and here"
    assert _tokenizer._TOKENIZE_ERROR == -(2**31)


def test_a_changed_declaration_is_noticed():
    """The comparison is not blind: a field or parameter type change, a renamed function and
    a dropped enum value all change the declarations."""
    text = (ROOT / PAIRS["tokenizer.h"]).read_text()
    base = declarations(text)
    for old, new in [("int32_t n_vocab;", "int n_vocab;"), ("size_t len, bool add_bos", "int len, bool add_bos"),
                     ("ts_token_lookup(", "ts_token_find("), ("TS_TOKEN_BYTE         = 6,", "")]:
        assert old in text, old
        assert declarations(text.replace(old, new)) != base, old
