"""Request bodies of /v1/completions and /v1/chat/completions.

pydantic models in strict mode with unknown fields forbidden: a misspelt or wrongly typed field
(`"temprature": 0`, `"max_tokens": "16"`) is a 400 naming it, never silently ignored. Options
OpenAI has and turbosparse's sampler has not (penalties, logprobs, logit_bias, n > 1) are
accepted only at their "off" value, and refused with a message otherwise.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Literal, Optional, Type, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import APIError, bad_request

_STRICT = ConfigDict(extra="forbid", strict=True)
INT32_MAX = 2**31 - 1


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields common to both endpoints. None means "the turbosparse default"."""

    model_config = _STRICT

    model: Optional[str] = None  # accepted and ignored: the server serves one model
    max_tokens: Optional[int] = Field(None, ge=-1, le=INT32_MAX)  # -1 or 0: until the end (of text, turn or context)
    temperature: Optional[float] = Field(None, ge=0.0, allow_inf_nan=False)
    top_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=-1, le=INT32_MAX)  # <= 0: off
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    repeat_penalty: Optional[float] = Field(None, gt=0.0, allow_inf_nan=False)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: Union[None, str, List[str]] = None
    seed: Optional[int] = Field(None, ge=0, le=2**64 - 1)
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    logit_bias: Optional[Dict[str, float]] = None

    def check_supported(self) -> None:
        """The OpenAI options accepted only when off (a clear 400 rather than ignoring them)."""
        if self.n != 1:
            raise bad_request(f"n={self.n} is not supported: turbosparse returns one choice per request (n=1)", "n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0.0:
                raise bad_request(f"{name}={getattr(self, name)} is not supported by turbosparse's sampler "
                                  "(only 0; repeat_penalty is available)", name)
        if self.logit_bias:
            raise bad_request("logit_bias is not supported by turbosparse", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options is only allowed with stream: true", "stream_options")

    def sampling_kwargs(self) -> Dict[str, Any]:
        """The arguments for turbosparse.Model.create_(chat_)completion that the request sets."""
        out: Dict[str, Any] = {}
        for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "stop", "seed"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    prompt: Union[str, List[int], List[str]]
    echo: bool = False
    suffix: Optional[str] = None
    logprobs: Optional[int] = None
    best_of: Optional[int] = None

    def check_supported(self) -> None:
        super().check_supported()
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            if len(self.prompt) != 1:
                raise bad_request(f"a list of {len(self.prompt)} prompts is not supported: send one prompt per "
                                  "request", "prompt")
        if self.suffix is not None:
            raise bad_request("suffix (insertion) is not supported by turbosparse", "suffix")
        if self.logprobs is not None:
            raise bad_request("logprobs is not supported by turbosparse", "logprobs")
        if self.best_of not in (None, 1):
            raise bad_request(f"best_of={self.best_of} is not supported (only 1)", "best_of")

    def prompt_value(self) -> Union[str, List[int]]:
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], str):
            return p[0]  # type: ignore[return-value]
        return p  # type: ignore[return-value]

    def completion_kwargs(self) -> Dict[str, Any]:
        kw = self.sampling_kwargs()
        kw["echo"] = self.echo
        kw["max_tokens"] = 16 if self.max_tokens is None else self.max_tokens  # OpenAI's default for completions
        return kw


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, List[TextPart], None] = None
    name: Optional[str] = None

    def as_dict(self) -> Dict[str, str]:
        c = self.content
        text = c if isinstance(c, str) else "" if c is None else "".join(p.text for p in c)
        # "developer" is OpenAI's newer name for "system"; chat templates know "system"
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(_Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=-1, le=INT32_MAX)  # OpenAI's newer name of max_tokens
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs or self.top_logprobs is not None:
            raise bad_request("logprobs is not supported by turbosparse", "logprobs")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise bad_request("give max_tokens or max_completion_tokens, not both", "max_completion_tokens")

    def completion_kwargs(self) -> Dict[str, Any]:
        kw = self.sampling_kwargs()
        limit = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        if limit is not None:
            kw["max_tokens"] = limit
        return kw


R = TypeVar("R", bound=_Sampling)


def parse_request(body: bytes, cls: Type[R]) -> R:
    """The validated request, or an APIError (400) naming the first problem."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise bad_request(f"the request body must be a JSON object, not {type(obj).__name__}")
    try:
        req = cls.model_validate(obj)
    except ValidationError as e:
        raise validation_error(e) from None
    req.check_supported()
    return req


def validation_error(e: ValidationError) -> APIError:
    first = e.errors()[0]
    # union members appear in loc as their type names ("list[int]"): leave them out of the path
    def union_member(p: Any) -> bool:
        return isinstance(p, str) and ("[" in p or p in ("str", "int", "none"))

    loc = first["loc"]
    path = [str(p) for p in loc if not union_member(p)]
    param = ".".join(path) or None
    if any(union_member(p) for p in loc):  # every member failed: say which types are allowed
        field = str(loc[0])
        allowed = {"prompt": "a string, a list of token ids or a list of one string",
                   "stop": "a string or a list of strings",
                   "content": "a string or a list of text parts"}.get(str(path[-1]) if path else field,
                                                                       "another type")
        return bad_request(f"{param or field} must be {allowed}", param or field)
    if first["type"] == "extra_forbidden":
        msg = f"unknown field '{param}'"
    elif first["type"] == "missing":
        msg = f"missing field '{param}'"
    else:
        msg = f"{param}: {first['msg']} (got {json.dumps(first.get('input'), default=str)[:80]})"
    more = len(e.errors()) - 1
    if more and first["type"] not in ("extra_forbidden", "missing"):
        msg += f" [{more} more problem{'s' if more > 1 else ''}]"
    return bad_request(msg, param)
