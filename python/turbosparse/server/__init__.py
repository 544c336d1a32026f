"""ts-server: an OpenAI-compatible HTTP server for turbosparse models.

Install with `pip install 'turbosparse[server]'` (Starlette, uvicorn, pydantic, sse-starlette),
run with `ts-server [-m MODEL]` or `python -m turbosparse.server`. Modules:

- cli: the command line, dependency check, uvicorn start and graceful shutdown
- app: the Starlette application and its routes
- schemas: request bodies (pydantic, strict: unknown or wrongly typed fields are errors)
- slots: the slot pool (one turbosparse.Model per slot) and the generation worker threads
- metrics: counters and the Prometheus text of /metrics
- errors: OpenAI-style error bodies

Importing this package imports no web framework (cli checks for it first, with a message).
"""
