"""ts-server / python -m turbosparse.server: the command line.

Checks that the web dependencies are installed (they are the `server` extra), loads the model
once with one context of --parallel sequences (a KV cache of -c tokens per slot, shared cell by
cell; turbosparse.batch), starts the batch scheduler over it, and runs the app under uvicorn. SIGTERM or Ctrl-C: uvicorn stops accepting connections, waits for
the requests in flight (up to --shutdown-timeout seconds), then the models are closed and the
process exits 0.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import Any, Dict, List, Optional

from .._gguf_meta import read_metadata

DEPENDENCIES = ("starlette", "uvicorn", "pydantic", "sse_starlette")


def missing_dependencies() -> List[str]:
    missing = []
    for name in DEPENDENCIES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _meta_int(meta: Dict[str, Any], key: str, default: int) -> int:
    v = meta.get(key, default)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def slot_ctx(path: str, ctx_size: Optional[int]) -> int:
    """Tokens per slot: -c, else the model's training context, at most 4096 (the runtime's default)."""
    if ctx_size is not None:
        return ctx_size
    meta, _ = read_metadata(path)
    return min(_meta_int(meta, "llama.context_length", 2048), 4096)


def check_memory(path: str, n_ctx: int, n_slots: int) -> None:
    """Refuses slots that together cannot fit in the machine's memory, before loading: the KV
    cache of n_slots x n_ctx tokens (f16) is one allocation, and a refusal here names the
    slots and the tokens of each, which the runtime's message (about the whole cache) cannot."""
    meta, _ = read_metadata(path)
    n_embd = _meta_int(meta, "llama.embedding_length", 0)
    n_head = max(1, _meta_int(meta, "llama.attention.head_count", 1))
    head_dim = _meta_int(meta, "llama.attention.key_length", n_embd // n_head)
    n_head_kv = _meta_int(meta, "llama.attention.head_count_kv", n_head)
    kv = n_ctx * _meta_int(meta, "llama.block_count", 0) * 2 * head_dim * n_head_kv * 2
    per_slot = kv
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # unknown here: nothing to check against
        return
    if ram > 0 and n_slots * per_slot > ram:
        mib = 1 << 20
        raise MemoryError(f"{n_slots} slots need about {n_slots * per_slot // mib} MiB ({kv // mib} MiB of KV cache "
                          f"for {n_ctx} tokens each), more than this machine's {ram // mib} MiB: use fewer slots "
                          "(--parallel) or a smaller context (-c)")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ts-server", description="An OpenAI-compatible HTTP server for turbosparse models "
        "(/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics).")
    p.add_argument("-m", "--model", default=None, help="GGUF model (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--parallel", "-np", type=int, default=4,
                   help="slots: requests generated at the same time, each step decoding one token of every busy "
                   "slot in one batched graph (default 4)")
    p.add_argument("-c", "--ctx-size", type=int, default=None,
                   help="context size of each slot in tokens (default: the model's, at most 4096)")
    p.add_argument("-t", "--threads", type=int, default=None, help="compute threads (default: the online CPUs)")
    p.add_argument("--prefill-chunk", type=int, default=64,
                   help="prompt tokens prefilled per step, between the slots' generated tokens (default 64)")
    p.add_argument("--ffn-mode", choices=["auto", "predicted", "exact", "threshold", "dense"], default="auto")
    p.add_argument("--threshold", type=float, default=None, help="predictor threshold (default: the file's)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: the TS_SERVER_API_KEY variable, else none)")
    p.add_argument("--alias", default=None, help="the model name the API reports (default: the file's name)")
    p.add_argument("--max-queue", type=int, default=32,
                   help="requests that may wait for a slot; beyond them 503 (default 32)")
    p.add_argument("--shutdown-timeout", type=float, default=60.0,
                   help="on SIGTERM, seconds to let requests in flight finish (default 60)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    args = p.parse_args(argv)
    for name in ("parallel", "max_queue"):
        if getattr(args, name) < (1 if name == "parallel" else 0):
            p.error(f"--{name.replace('_', '-')} must be {'>= 1' if name == 'parallel' else '>= 0'}")
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in 0..65535 (got {args.port})")
    for name in ("ctx_size", "threads", "prefill_chunk"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    missing = missing_dependencies()
    if missing:
        print(f"ts-server: the web server's dependencies are not installed (missing: {', '.join(missing)}); "
              "install them with: pip install 'turbosparse[server]'", file=sys.stderr)
        return 1
    import uvicorn

    from ..batch import Scheduler
    from ..errors import TurboSparseError
    from ..model import Model, default_model_path
    from .app import ServerOptions, create_app

    model: Optional[Model] = None
    try:
        path = args.model if args.model is not None else str(default_model_path())
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such model file")
        n_ctx = slot_ctx(path, args.ctx_size)
        check_memory(path, n_ctx, args.parallel)
        model = Model(path, n_ctx=n_ctx * args.parallel, n_threads=args.threads, ffn_mode=args.ffn_mode,
                      threshold=args.threshold, n_seq_max=args.parallel)
    except (TurboSparseError, ValueError, TypeError, MemoryError, OSError) as e:
        if model is not None:
            model.close()
        print(f"ts-server: error: {e}", file=sys.stderr)
        return 1
    scheduler = Scheduler(model, prefill_chunk=args.prefill_chunk)
    alias = args.alias or os.path.splitext(os.path.basename(path))[0]
    api_key = args.api_key if args.api_key is not None else os.environ.get("TS_SERVER_API_KEY") or None
    options = ServerOptions(alias=alias, api_key=api_key, max_queue=args.max_queue,
                            shutdown_timeout_s=args.shutdown_timeout)
    app = create_app(model, scheduler, options)
    print(f"ts-server: {path} as '{alias}': {args.parallel} slot(s) of {n_ctx} tokens decoded in batches, "
          f"{model.n_threads} thread(s), FFN mode {model.ffn_mode}; http://{args.host}:{args.port}/v1",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            access_log=args.access_log, timeout_graceful_shutdown=args.shutdown_timeout,
                            lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM/SIGINT while it serves, then raises the signal again once it has
    # shut down (so that the default action kills the process): ignore that second delivery,
    # so a graceful shutdown exits 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    try:
        server.run()
    finally:
        scheduler.close()
        model.close()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
