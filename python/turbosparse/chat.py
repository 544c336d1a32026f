"""Chat prompts: renders a model's Jinja chat template the way Hugging Face transformers does
(sandboxed environment, trim_blocks / lstrip_blocks, raise_exception, tojson, strftime_now).

    from turbosparse.chat import render_chat
    text = render_chat(template, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)

A model file without a `tokenizer.chat_template` gets ChatML (what TurboSparse chat models use).

render_chat_pieces keeps the template's own text apart from the messages' content, so that only
the template's markers become special tokens: a message holding "<|im_end|>" must not end its
turn (prompt injection). It renders the template a second time with a unique placeholder in
place of each message's content and lines the two renderings up.
"""
from __future__ import annotations

import datetime
import functools
import json
import re
import secrets
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

from .errors import TemplateError

Message = Mapping[str, Any]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_END_OF_TURN = "<|im_end|>"


def _raise_exception(message: str) -> None:
    raise TemplateError(f"chat template: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent: Optional[int] = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"chat template does not parse: {e}") from None


def check_messages(messages: Any) -> List[Dict[str, Any]]:
    """messages as a list of plain dicts, each with a str role and a str (or None) content."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"message {i} must be a dict, not {type(m).__name__}")
        if not isinstance(m.get("role"), str):
            raise TypeError(f"message {i} needs a str 'role'")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise TypeError(f"message {i}: 'content' must be a str, not {type(content).__name__}")
        out.append(dict(m))
    return out


def _render(template: Optional[str], checked: List[Dict[str, Any]], add_generation_prompt: bool,
            bos_token: str, eos_token: str, variables: Dict[str, Any]) -> str:
    import jinja2

    compiled = _compile(template if template is not None else CHATML_TEMPLATE)
    try:
        return compiled.render(messages=checked, add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **variables)
    except TemplateError:
        raise
    except (jinja2.TemplateError, TypeError, KeyError, ValueError) as e:
        raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None


def render_chat(template: Optional[str], messages: Sequence[Message], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", **variables: Any) -> str:
    """The prompt text for `messages`. template None means ChatML. Extra keyword variables
    (e.g. tools, date_string) are passed to the template as Hugging Face does."""
    return _render(template, check_messages(messages), add_generation_prompt, bos_token, eos_token, variables)


class ChatPiece(NamedTuple):
    """A stretch of a rendered chat prompt: the template's own text (whose special-token texts
    are meant as those tokens) or a message's content (plain text, whatever it holds)."""

    text: str
    from_template: bool


class RenderedChat(NamedTuple):
    text: str  # what render_chat returns
    masked_text: str  # the same rendering with a placeholder in place of each message's content
    pieces: Optional[List[ChatPiece]]  # text cut into template and content; None: not possible


def _content_variants(content: str) -> List[str]:
    """What a template may have made of a message's content that still lets it be found:
    unchanged, or stripped (`.strip()`, `|trim`: Llama-2, Gemma and Mistral templates do)."""
    out: List[str] = []
    for v in (content, content.strip(), content.lstrip(), content.rstrip()):
        if v not in out:
            out.append(v)
    return out


def _align(text: str, masked_parts: List[str], contents: List[str]) -> Optional[List[ChatPiece]]:
    """text cut into pieces along the masked rendering (split at its placeholders: template
    text at even indices, a content index at odd ones); None when text is not that template
    text with each placeholder replaced by (a variant of) its content."""
    pieces: List[ChatPiece] = []
    pos = 0
    for k, part in enumerate(masked_parts):
        if k % 2 == 0:
            if not text.startswith(part, pos):
                return None
            if part:
                pieces.append(ChatPiece(part, True))
            pos += len(part)
            continue
        after = masked_parts[k + 1]  # re.split always ends with a template part
        for variant in _content_variants(contents[int(part)]):
            if text.startswith(variant, pos) and text.startswith(after, pos + len(variant)):
                break
        else:
            return None
        if variant:
            pieces.append(ChatPiece(variant, False))
        pos += len(variant)
    return pieces if pos == len(text) else None


def render_chat_pieces(template: Optional[str], messages: Sequence[Message], add_generation_prompt: bool = True,
                       bos_token: str = "", eos_token: str = "", **variables: Any) -> RenderedChat:
    """render_chat's text, and the same text cut into the template's own text and the
    messages' contents (str contents only; a list content stays part of the template's text).

    The template is rendered a second time with each non-empty str content replaced by a
    random placeholder (letters and digits, no whitespace) that occurs nowhere in the template
    or the conversation; the real rendering must then be the placeholder rendering with each
    placeholder replaced by its content, unchanged or stripped. When it is not (the template
    changes the content in other ways: upper-cases, slices, escapes it as JSON, or branches on
    what it says) `pieces` is None and the caller decides what is safe."""
    checked = check_messages(messages)
    text = _render(template, checked, add_generation_prompt, bos_token, eos_token, variables)
    source = template if template is not None else CHATML_TEMPLATE
    tag = secrets.token_hex(8)
    while tag in text or tag in source:  # not in the template nor in any content
        tag = secrets.token_hex(8)
    contents: List[str] = []
    masked: List[Dict[str, Any]] = []
    for m in checked:
        content = m.get("content")
        if isinstance(content, str) and content:  # "" stays "": a template may test for it
            m = {**m, "content": f"TSMSG{tag}N{len(contents)}E"}
            contents.append(content)
        masked.append(m)
    if not contents:
        return RenderedChat(text, text, [ChatPiece(text, True)] if text else [])
    masked_text = _render(template, masked, add_generation_prompt, bos_token, eos_token, variables)
    parts = re.split(f"TSMSG{tag}N([0-9]+)E", masked_text)
    return RenderedChat(text, masked_text, _align(text, parts, contents))
