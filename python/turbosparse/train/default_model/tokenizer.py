"""The bundled model's tokenizer: a Llama-style SentencePiece BPE (identity normaliser, no
whitespace collapsing, byte fallback, digits split, dummy prefix) and the ChatML tokens
<|im_end|>, <|im_start|> added right after the SentencePiece pieces, as TurboSparse does.

The runtime's C tokenizer gives exactly SentencePiece's ids for vocabularies trained this way.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterable

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ("<|im_end|>", "<|im_start|>")
UNK, BOS, EOS = 0, 1, 2


def train_sentencepiece(texts: Iterable[str], n_pieces: int, threads: int = 2) -> bytes:
    """A serialised SentencePiece model of n_pieces pieces, trained on the lines of texts."""
    import sentencepiece as spm

    def lines() -> Iterable[str]:
        for t in texts:
            for line in t.split("\n"):
                if line.strip():
                    yield line

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines()), model_writer=buf, vocab_size=n_pieces, model_type="bpe",
        normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=True,
        split_digits=True, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        character_coverage=0.9999, max_sentence_length=1 << 16, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        pad_id=-1, num_threads=threads, minloglevel=2)
    return buf.getvalue()


def write_tokenizer(folder: Path, model: bytes) -> int:
    """tokenizer.model and tokenizer_config.json into folder; returns the vocabulary size
    (SentencePiece pieces plus the two ChatML tokens)."""
    import sentencepiece as spm

    n_sp = spm.SentencePieceProcessor(model_proto=model).vocab_size()
    (folder / "tokenizer.model").write_bytes(model)
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "pad_token": None,
        "chat_template": CHATML_TEMPLATE,
        "added_tokens_decoder": {
            "0": {"content": "<unk>", "special": True},
            "1": {"content": "<s>", "special": True},
            "2": {"content": "</s>", "special": True},
            **{str(n_sp + i): {"content": text, "special": True} for i, text in enumerate(SPECIALS)},
        },
        "tokenizer_class": "LlamaTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return n_sp + len(SPECIALS)


class Encoder:
    """Text -> ids as turbosparse.Model.tokenize(text, special=True) gives them: each ChatML
    token's text becomes its id, the fragments between are encoded on their own."""

    def __init__(self, model: bytes):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_proto=model)
        n_sp = self.sp.vocab_size()
        self.special_ids = {text: n_sp + i for i, text in enumerate(SPECIALS)}

    def encode(self, text: str) -> list[int]:
        import re

        out: list[int] = []
        start = 0
        for m in re.finditer("|".join(re.escape(t) for t in SPECIALS), text):
            if m.start() > start:
                out += self.sp.encode(text[start:m.start()])
            out.append(self.special_ids[m.group()])
            start = m.end()
        if start < len(text):
            out += self.sp.encode(text[start:])
        return out
