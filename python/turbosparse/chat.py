"""Chat prompts: renders a model's Jinja chat template the way Hugging Face transformers does
(sandboxed environment, trim_blocks / lstrip_blocks, raise_exception, tojson, strftime_now).

    from turbosparse.chat import render_chat
    text = render_chat(template, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)

A model file without a `tokenizer.chat_template` gets ChatML (what TurboSparse chat models use).
"""
from __future__ import annotations

import datetime
import functools
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

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


def render_chat(template: Optional[str], messages: Sequence[Message], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", **variables: Any) -> str:
    """The prompt text for `messages`. template None means ChatML. Extra keyword variables
    (e.g. tools, date_string) are passed to the template as Hugging Face does."""
    import jinja2

    checked = check_messages(messages)
    compiled = _compile(template if template is not None else CHATML_TEMPLATE)
    try:
        return compiled.render(messages=checked, add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **variables)
    except TemplateError:
        raise
    except (jinja2.TemplateError, TypeError, KeyError, ValueError) as e:
        raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
