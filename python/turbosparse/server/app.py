"""The Starlette application: routes, authentication, the request -> slot -> response path.

Starlette + uvicorn + pydantic + sse-starlette (the stack llama-cpp-python's server uses,
without FastAPI: a handful of routes need no dependency injection or generated OpenAPI schema,
and plain Starlette handlers keep each step of a request visible).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterator, List, Optional, Type, TypeVar, Union

from sse_starlette.sse import AppStatus, EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..batch import Scheduler, SequenceHandle
from ..errors import ContextFullError, TurboSparseError
from ..model import Model
from .errors import APIError, bad_request
from .metrics import Metrics
from .schemas import ChatCompletionRequest, CompletionRequest, parse_request
from .slots import Job, QueueFull, SlotPool

T = TypeVar("T")
Chunk = Dict[str, Any]

# In-flight streams run to their end on SIGTERM (uvicorn stops accepting and waits for them, up
# to its graceful-shutdown timeout); sse-starlette's default would cut every open stream at once.
AppStatus.disable_automatic_graceful_drain()

DISCONNECT_POLL_S = 0.1  # how often a request that is not streaming yet checks for its client


class ClientGone(Exception):
    """The client disconnected before its response began."""


@dataclass
class ServerOptions:
    alias: str
    api_key: Optional[str] = None
    max_queue: int = 32
    max_body_bytes: int = 8 << 20
    shutdown_timeout_s: float = 60.0


def error_response(e: APIError, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def api_error_of(e: BaseException, endpoint: str) -> APIError:
    """The answer to an exception raised by turbosparse for a request."""
    param = "messages" if endpoint == "chat" else "prompt"
    if isinstance(e, ContextFullError):
        # the library's advice is for its callers ("make the Model with a larger n_ctx"): a
        # server's client is told what the server can do
        what = str(e).split(" (make the Model", 1)[0]
        return bad_request(f"the prompt does not fit a slot's context: {what} (shorten the prompt, or start the "
                           "server with a larger -c)", param)
    if isinstance(e, (ValueError, TypeError)):  # argument errors, incl. SamplingError, TemplateError, ...
        return bad_request(str(e))
    if isinstance(e, TurboSparseError):
        return APIError(500, f"the model failed: {e}", "server_error")
    return APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error")


class Server:
    """The state behind the routes: the model, its batch scheduler and slots, metrics, options."""

    def __init__(self, model: Model, scheduler: Scheduler, options: ServerOptions) -> None:
        self.model = model
        self.scheduler = scheduler
        self.options = options
        self.pool = SlotPool(scheduler.sequences, options.max_queue)
        self.metrics = Metrics()
        self.n_slots = len(scheduler.sequences)
        self.n_ctx = scheduler.sequences[0].n_ctx
        self.created = int(os.path.getmtime(model.path)) if os.path.exists(model.path) else int(time.time())
        self.info = {"n_ctx_per_slot": self.n_ctx, "n_slots": self.n_slots, "n_vocab": model.n_vocab,
                     "ffn_mode": model.ffn_mode, "n_threads": model.n_threads,
                     "prefill_chunk": scheduler.prefill_chunk, "path": model.path}

    # ---- helpers ------------------------------------------------------------------------
    def check_auth(self, request: Request) -> None:
        key = self.options.api_key
        if key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                           "invalid_request_error", code="invalid_api_key")

    async def read_body(self, request: Request) -> bytes:
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"the request body is {declared} bytes, more than the limit of {limit}")
        parts: List[bytes] = []
        size = 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise APIError(413, f"the request body is more than the limit of {limit} bytes")
            parts.append(part)
        return b"".join(parts)

    @staticmethod
    async def unless_disconnected(request: Request, awaitable: Awaitable[T]) -> T:
        """awaitable's result; ClientGone (and awaitable cancelled) if the client leaves first.
        Starlette does not cancel a handler whose client went away, so a request waiting for a
        slot or for its first token checks for it here."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    raise ClientGone()
        finally:
            if not task.done():
                task.cancel()
                try:
                    await task
                except BaseException:
                    pass

    def job_ended(self, job: Job, endpoint: str) -> None:
        """Accounting once a job's thread has ended (runs on the loop)."""
        usage = (job.last_chunk or {}).get("usage")
        if usage is not None:
            ttft = job.first_chunk_at - job.started_at if job.first_chunk_at is not None else -1.0
            self.metrics.count_tokens(usage["prompt_tokens"], usage["completion_tokens"], ttft)
        if job.cancelled:
            outcome = "cancelled"
        elif job.error is not None:
            outcome = "client_error" if api_error_of(job.error, endpoint).status < 500 else "error"
        else:
            outcome = "ok"
        self.metrics.count_request(endpoint, outcome)

    # ---- the generation endpoints -------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        return await self.generate(request, "completions", CompletionRequest)

    async def chat_completions(self, request: Request) -> Response:
        return await self.generate(request, "chat", ChatCompletionRequest)

    def start_fn(self, endpoint: str,
                 req: Union[CompletionRequest, ChatCompletionRequest]) -> Callable[[SequenceHandle], Iterator[Chunk]]:
        kwargs = req.completion_kwargs()
        alias = self.options.alias
        model = self.model
        if isinstance(req, CompletionRequest):
            prompt = req.prompt_value()
            return lambda seq: model.create_completion(prompt, stream=True, model_name=alias, sequence=seq, **kwargs)
        messages = [m.as_dict() for m in req.messages]
        return lambda seq: model.create_chat_completion(messages, stream=True, model_name=alias, sequence=seq,
                                                        **kwargs)

    async def generate(self, request: Request, endpoint: str,
                       cls: Type[Union[CompletionRequest, ChatCompletionRequest]]) -> Response:
        try:
            self.check_auth(request)
            req = parse_request(await self.read_body(request), cls)
            slot = await self.unless_disconnected(request, self.pool.acquire())
        except APIError as e:
            self.metrics.count_request(endpoint, "client_error")
            return error_response(e)
        except QueueFull as e:
            self.metrics.count_request(endpoint, "rejected")
            return error_response(APIError(503, str(e), "server_error", code="queue_full"), {"Retry-After": "1"})
        except ClientGone:
            self.metrics.count_request(endpoint, "cancelled")
            return Response(status_code=499)  # nobody reads it

        job = Job(self.pool, slot, asyncio.get_running_loop(), lambda j: self.job_ended(j, endpoint))
        job.start(self.start_fn(endpoint, req))
        try:
            # the first event: a chunk (the arguments and the prompt's length were accepted; a
            # completion's prompt is decoded too, a chat stream's first chunk is only the role) or
            # an error, which can still be answered with a status code
            kind, value = await self.unless_disconnected(request, job.events.get())
            if kind == "error":
                return error_response(api_error_of(value, endpoint))
            if kind == "end":  # not reached: a generation yields at least its final chunk
                return error_response(APIError(500, "the generation ended without a result", "server_error"))
            if req.stream:
                return EventSourceResponse(self.sse(job, value, endpoint, req.include_usage), ping=10)
            return JSONResponse(await self.unless_disconnected(request, self.collect(job, value, endpoint)))
        except ClientGone:
            job.cancel()
            return Response(status_code=499)
        except _ErrorResult as e:
            return error_response(e.error)
        except BaseException:
            job.cancel()
            raise

    async def sse(self, job: Job, first: Chunk, endpoint: str, include_usage: bool) -> AsyncIterator[Dict[str, str]]:
        """The server-sent events of a stream: the chunks, an optional usage chunk, [DONE].
        sse-starlette cancels this generator when the client disconnects: the job is then
        cancelled and its thread stops after the current token."""
        chunk: Optional[Chunk] = first
        usage = None
        ended = False
        try:
            while True:
                if chunk is not None:
                    chunk = dict(chunk)
                    usage = chunk.pop("usage", usage)
                    yield {"data": json.dumps(chunk)}
                kind, value = await job.events.get()
                if kind == "chunk":
                    chunk = value
                elif kind == "error":
                    yield {"data": json.dumps(api_error_of(value, endpoint).body())}
                    chunk = None
                else:  # end
                    ended = True
                    break
            if include_usage and usage is not None and job.error is None:
                # OpenAI's shape: a last chunk with empty choices and the usage
                yield {"data": json.dumps({"id": first["id"], "object": first["object"], "created": first["created"],
                                           "model": first["model"], "choices": [], "usage": usage})}
            yield {"data": "[DONE]"}
        finally:
            if not ended:  # the client went away (or the send failed): stop generating
                job.cancel()

    async def collect(self, job: Job, first: Chunk, endpoint: str) -> Chunk:
        """A whole (non-streamed) response from the job's chunks."""
        chunks = [first]
        while True:
            kind, value = await job.events.get()
            if kind == "chunk":
                chunks.append(value)
            elif kind == "error":
                raise _ErrorResult(api_error_of(value, endpoint))
            else:
                break
        last = chunks[-1]
        head = {"id": first["id"], "created": first["created"], "model": first["model"]}
        finish = last["choices"][0]["finish_reason"]
        if endpoint == "completions":
            text = "".join(c["choices"][0]["text"] for c in chunks)
            return {**head, "object": "text_completion",
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
                    "usage": last.get("usage")}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        return {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": finish}],
                "usage": last.get("usage")}

    # ---- the other endpoints ------------------------------------------------------------
    async def models_list(self, request: Request) -> Response:
        try:
            self.check_auth(request)
        except APIError as e:
            return error_response(e)
        return JSONResponse({"object": "list", "data": [
            {"id": self.options.alias, "object": "model", "created": self.created, "owned_by": "turbosparse",
             "meta": self.info}]})

    async def health(self, request: Request) -> Response:
        busy = self.pool.n_busy
        return JSONResponse({"status": "ok", "slots_idle": self.n_slots - busy, "slots_processing": busy,
                             "queue_length": self.pool.n_waiting})

    async def metrics_text(self, request: Request) -> Response:
        try:
            self.check_auth(request)
        except APIError as e:
            return error_response(e)
        # Model.stats waits for the scheduler's current step: read them off the loop's thread
        stats = await run_in_threadpool(lambda: self.model.stats)
        text = self.metrics.render(stats, self.scheduler.stats, self.n_slots, self.pool.n_busy, self.pool.n_waiting,
                                   self.options.max_queue)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


class _ErrorResult(Exception):
    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    what = {404: f"no such endpoint: {request.method} {request.url.path}",
            405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return error_response(APIError(exc.status_code, what, "invalid_request_error"), getattr(exc, "headers", None))


def create_app(model: Model, scheduler: Scheduler, options: ServerOptions) -> Starlette:
    server = Server(model, scheduler, options)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        # uvicorn has waited for in-flight requests; cancelled jobs may still be ending
        await server.pool.wait_idle(options.shutdown_timeout_s)
        scheduler.close()
        model.close()

    routes = [
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/v1/models", server.models_list, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.state.server = server
    return app
