"""`grader serve`: the HTTP service, in one process or several."""

from __future__ import annotations

import argparse
import os


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.settings import Settings

    settings = Settings()
    from service.app import announce
    from service.server_options import server_options

    announce(settings, args.host, args.port)
    if args.workers > 1 and "GRADER_ONNX_THREADS" not in os.environ:
        # each worker process runs its own ONNX Runtime session: share the cores out, not multiply them
        os.environ["GRADER_ONNX_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.workers))
    if args.workers > 1:
        from service.workers import serve_workers

        return serve_workers(args.workers, args.host, args.port, args.log_level)
    uvicorn.run("service.app:app_from_env", host=args.host, port=args.port, log_level=args.log_level, **server_options(settings))
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, each with its own socket on the port (SQLite or PostgreSQL; replicas on several hosts need PostgreSQL)",
    )
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=_serve)
