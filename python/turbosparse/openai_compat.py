"""OpenAI-style results with the same dict shapes (and chunk streams) as llama-cpp-python's
Llama.create_completion / create_chat_completion, so that code written for it ports by changing
the import:

    model = turbosparse.Model("model.gguf")
    out = model.create_chat_completion(messages=[{"role": "user", "content": "Hi"}])
    print(out["choices"][0]["message"]["content"])

Sampling options llama.cpp's sampler has and turbosparse's has not (frequency/presence
penalties, typical-p, mirostat, grammars, logprobs) are refused with a ValueError when given a
value other than their "off" default, rather than silently ignored.
"""
from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Union

if TYPE_CHECKING:
    from .batch import SequenceHandle
    from .model import Model, Prompt

Completion = Dict[str, Any]
CompletionChunk = Dict[str, Any]
StopArg = Union[None, str, Sequence[str]]


def _unsupported(**options: Any) -> None:
    off = {"logprobs": None, "frequency_penalty": 0.0, "presence_penalty": 0.0, "typical_p": 1.0,
           "mirostat_mode": 0, "grammar": None, "suffix": None, "logit_bias": None}
    for name, value in options.items():
        if value != off[name]:
            raise ValueError(f"turbosparse does not support {name}={value!r} (only {off[name]!r})")


def _usage(n_prompt: int, n_completion: int) -> Dict[str, int]:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}


def create_completion(model: "Model", prompt: "Prompt", max_tokens: Optional[int] = 16, temperature: float = 0.8,
                      top_p: float = 0.95, min_p: float = 0.05, echo: bool = False, stop: StopArg = None,
                      repeat_penalty: float = 1.0, top_k: int = 40, stream: bool = False,
                      seed: Optional[int] = None, suffix: Optional[str] = None, logprobs: Optional[int] = None,
                      frequency_penalty: float = 0.0, presence_penalty: float = 0.0, typical_p: float = 1.0,
                      mirostat_mode: int = 0, grammar: Any = None, logit_bias: Any = None,
                      model_name: Optional[str] = None,
                      sequence: Optional["SequenceHandle"] = None) -> Union[Completion, Iterator[CompletionChunk]]:
    """A text completion of prompt, as llama-cpp-python returns it: {"id", "object":
    "text_completion", "created", "model", "choices": [{"text", "index", "logprobs",
    "finish_reason"}], "usage"}; with stream=True an iterator of such chunks, the last one
    with an empty text, the finish_reason and the "usage" (the others have none; a server
    reads the token counts of a stream there). max_tokens None or <= 0: until the
    end of text or of the context. sequence: a turbosparse.batch sequence to decode in (its
    scheduler batches it with the others), else the model's own."""
    from .model import Generation

    _unsupported(suffix=suffix, logprobs=logprobs, frequency_penalty=frequency_penalty,
                 presence_penalty=presence_penalty, typical_p=typical_p, mirostat_mode=mirostat_mode,
                 grammar=grammar, logit_bias=logit_bias)
    if max_tokens is not None and not isinstance(max_tokens, bool) and isinstance(max_tokens, int) and max_tokens <= 0:
        max_tokens = None
    ids, max_tokens, params, seed_v, stops = model._prepare(
        prompt, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, 64, stop, seed, None)
    gen = Generation(ids)
    pieces = model._run(ids, max_tokens, params, seed_v, stops, False, gen, frozenset(), sequence)
    head = {"id": f"cmpl-{uuid.uuid4()}", "object": "text_completion", "created": int(time.time()),
            "model": model_name or model.path}
    prefix = (prompt if isinstance(prompt, str) else model.detokenize(ids)) if echo else ""

    def choice(text: str, finish: Optional[str]) -> Dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

    if not stream:
        text = prefix + "".join(pieces)
        return {**head, "choices": [choice(text, gen.finish_reason)],
                "usage": _usage(len(ids), len(gen.completion_tokens))}

    def chunks() -> Iterator[CompletionChunk]:
        if prefix:
            yield {**head, "choices": [choice(prefix, None)]}
        for piece in pieces:
            yield {**head, "choices": [choice(piece, None)]}
        yield {**head, "choices": [choice("", gen.finish_reason)],
               "usage": _usage(len(ids), len(gen.completion_tokens))}

    return chunks()


def create_chat_completion(model: "Model", messages: Sequence[Dict[str, Any]], temperature: float = 0.2,
                           top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05, stream: bool = False,
                           stop: StopArg = None, seed: Optional[int] = None, max_tokens: Optional[int] = None,
                           repeat_penalty: float = 1.0, logprobs: Optional[bool] = None,
                           frequency_penalty: float = 0.0, presence_penalty: float = 0.0, typical_p: float = 1.0,
                           mirostat_mode: int = 0, grammar: Any = None, logit_bias: Any = None,
                           model_name: Optional[str] = None,
                           sequence: Optional["SequenceHandle"] = None) -> Union[Completion, Iterator[CompletionChunk]]:
    """The assistant's reply, as llama-cpp-python returns it: {"id", "object":
    "chat.completion", "created", "model", "choices": [{"index", "message": {"role":
    "assistant", "content"}, "logprobs", "finish_reason"}], "usage"}; with stream=True an
    iterator of "chat.completion.chunk" dicts: first a delta {"role": "assistant"}, then
    {"content": piece} deltas, then an empty delta with the finish_reason and the "usage".
    sequence: as create_completion."""
    _unsupported(logprobs=None if not logprobs else logprobs, frequency_penalty=frequency_penalty,
                 presence_penalty=presence_penalty, typical_p=typical_p, mirostat_mode=mirostat_mode,
                 grammar=grammar, logit_bias=logit_bias)
    if max_tokens is not None and not isinstance(max_tokens, bool) and isinstance(max_tokens, int) and max_tokens <= 0:
        max_tokens = None
    pieces, gen = model._chat_run(messages, max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, stop,
                                  seed, 64, {}, sequence)
    head = {"id": f"chatcmpl-{uuid.uuid4()}", "created": int(time.time()), "model": model_name or model.path}

    if not stream:
        text = "".join(pieces)
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": gen.finish_reason}],
                "usage": _usage(len(gen.prompt_tokens), len(gen.completion_tokens))}

    def chunk(delta: Dict[str, Any], finish: Optional[str]) -> CompletionChunk:
        return {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def chunks() -> Iterator[CompletionChunk]:
        yield chunk({"role": "assistant"}, None)
        for piece in pieces:
            yield chunk({"content": piece}, None)
        yield {**chunk({}, gen.finish_reason), "usage": _usage(len(gen.prompt_tokens), len(gen.completion_tokens))}

    return chunks()


__all__: List[str] = ["create_completion", "create_chat_completion"]
