"""`lavt serve [--checkpoint C] [--host H] [--port P] ...`: the web page and the REST API."""
from __future__ import annotations

import argparse
from pathlib import Path

from lavt.errors import LAVTUserError, require_extra


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a web page and a REST API for a model",
        description="Serves the page at / (upload an image, write expressions, press Segment), the Gradio "
        "API endpoint /segment, and REST: POST /v1/segment, GET /v1/model, GET /healthz. Without "
        "--checkpoint it serves the shipped demo model. Needs the 'web' extra.",
    )
    p.add_argument("--checkpoint", "-c", type=Path, default=None,
                   help="model folder, training checkpoint or official .pth (default: the shipped demo model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto: cuda when visible)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast precision (default fp32)")
    p.add_argument("--graphs", default=None, choices=["float32", "int8"],
                   help="exported folder: run its float32 or int8 graphs (default: the folder's choice)")
    p.add_argument("--concurrency", type=int, default=1, help="model calls running at once (default 1)")
    p.add_argument("--queue-size", type=int, default=32,
                   help="requests waiting beyond those; more are answered 'busy' (HTTP 503) (default 32)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    p.add_argument("--max-megapixels", type=float, default=40.0, help="largest image in megapixels (default 40)")
    p.add_argument("--max-expressions", type=int, default=16, help="most expressions per request (default 16)")
    p.add_argument("--examples", type=int, default=3,
                   help="generated example scenes on the page, segmented at startup (default 3; 0: none)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="web server log level (default warning)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_extra("lavt serve", "web", ("gradio", "fastapi", "uvicorn"))
    if not 0 <= args.port <= 65535:
        raise LAVTUserError(f"--port must be between 0 and 65535, got {args.port}")
    if args.concurrency < 1:
        raise LAVTUserError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.queue_size < 0:
        raise LAVTUserError(f"--queue-size must be 0 or more, got {args.queue_size}")
    from lavt.serve.launch import serve
    from lavt.serve.limits import MB, Limits

    limits = Limits(max_upload_bytes=int(args.max_upload_mb * MB), max_pixels=int(args.max_megapixels * 1e6),
                    max_expressions=args.max_expressions)
    return serve(args.checkpoint, host=args.host, port=args.port, device=args.device, precision=args.precision,
                 concurrency=args.concurrency, queue_size=args.queue_size, limits=limits,
                 examples=args.examples, log_level=args.log_level, graphs=args.graphs)
