"""ts-server / python -m turbosparse.server: the command line.

Checks that the web dependencies are installed (they are the `server` extra), loads one
turbosparse.Model per slot (the weights file is memory-mapped, so its pages are shared between
the slots; each slot has its own KV cache and its own copy of the repacked dense weights), and
runs the app under uvicorn. SIGTERM or Ctrl-C: uvicorn stops accepting connections, waits for
the requests in flight (up to --shutdown-timeout seconds), then the models are closed and the
process exits 0.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    from ..model import Model

DEPENDENCIES = ("starlette", "uvicorn", "pydantic", "sse_starlette")


def missing_dependencies() -> List[str]:
    missing = []
    for name in DEPENDENCIES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def check_memory(model: "Model", n_slots: int) -> None:
    """Refuses slots that together cannot fit in the machine's memory, before loading them: the C
    runtime checks each context alone, and N contexts that each fit would otherwise end in the
    OOM killer. Per slot: the f16 KV cache and the RAM copy of the densely read weights."""
    info = model.info
    kv = model.n_ctx * info["n_layer"] * 2 * info["head_dim"] * info["n_head_kv"] * 2
    per_slot = kv + int(info["n_bytes_repacked"])
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # unknown here: nothing to check against
        return
    if ram > 0 and n_slots * per_slot > ram:
        mib = 1 << 20
        raise MemoryError(f"{n_slots} slots need about {n_slots * per_slot // mib} MiB ({kv // mib} MiB of KV cache "
                          f"for {model.n_ctx} tokens and {int(info['n_bytes_repacked']) // mib} MiB of dense "
                          f"weights each), more than this machine's {ram // mib} MiB: use fewer slots (--parallel) "
                          "or a smaller context (-c)")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ts-server", description="An OpenAI-compatible HTTP server for turbosparse models "
        "(/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics).")
    p.add_argument("-m", "--model", default=None, help="GGUF model (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--parallel", "-np", type=int, default=1,
                   help="slots: requests generated at the same time, one model context each (default 1)")
    p.add_argument("-c", "--ctx-size", type=int, default=None,
                   help="context size of each slot in tokens (default: the model's, at most 4096)")
    p.add_argument("-t", "--threads", type=int, default=None,
                   help="compute threads per slot (default: the CPUs divided among the slots)")
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
    for name in ("ctx_size", "threads"):
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

    from ..errors import TurboSparseError
    from ..model import Model, default_model_path
    from .app import ServerOptions, create_app

    path = args.model if args.model is not None else str(default_model_path())
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.parallel)
    models: List[Model] = []
    try:
        for _ in range(args.parallel):
            models.append(Model(path, n_ctx=args.ctx_size, n_threads=threads, ffn_mode=args.ffn_mode,
                                threshold=args.threshold))
            if len(models) == 1:
                check_memory(models[0], args.parallel)
    except (TurboSparseError, ValueError, TypeError, MemoryError) as e:
        for m in models:
            m.close()
        print(f"ts-server: error: {e}", file=sys.stderr)
        return 1
    alias = args.alias or os.path.splitext(os.path.basename(path))[0]
    api_key = args.api_key if args.api_key is not None else os.environ.get("TS_SERVER_API_KEY") or None
    options = ServerOptions(alias=alias, api_key=api_key, max_queue=args.max_queue,
                            shutdown_timeout_s=args.shutdown_timeout)
    app = create_app(models, options)
    m0 = models[0]
    print(f"ts-server: {path} as '{alias}': {args.parallel} slot(s) of {m0.n_ctx} tokens, {m0.n_threads} "
          f"thread(s) each, FFN mode {m0.ffn_mode}; http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
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
        for m in models:
            m.close()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
