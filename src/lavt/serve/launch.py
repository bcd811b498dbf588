"""`lavt serve`: bind, load the model, build the page and the REST API, serve until stopped.

Needs the `web` extra (gradio, fastapi, uvicorn); `lavt.cli.serve` checks for it before
importing this module. Gradio is kept offline: no analytics, no version check, no share
link, system fonts, and its temporary files and example cache in a folder of this server
that is removed on exit.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from lavt.errors import LAVTUserError
from lavt.serve.limits import Limits
from lavt.serve.service import SegmentService

OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "GRADIO_SHARE": "False",
    "GRADIO_SSR_MODE": "False",
    "GRADIO_MCP_SERVER": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so a busy port fails before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LAVTUserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another "
                            "--port (0 picks a free one) or --host") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # so the work folder is removed on SIGTERM too


def serve(
    checkpoint: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "auto",
    precision: str = "fp32",
    concurrency: int = 1,
    queue_size: int = 32,
    limits: Limits | None = None,
    examples: int = 3,
    log_level: str = "warning",
    graphs: str | None = None,
) -> int:
    """Serve the page at `/` and the REST API under `/v1` until Ctrl-C or SIGTERM."""
    sock = bind(host, port)
    work = Path(tempfile.mkdtemp(prefix="lavt-serve-"))
    previous_term = signal.signal(signal.SIGTERM, _terminate)
    try:
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
        os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")
        os.environ["GRADIO_EXAMPLES_CACHE"] = str(work / "examples_cache")
        app, service = build(checkpoint, device, precision, concurrency, queue_size, limits, examples, work, graphs)
        url = url_of(sock)
        asyncio.run(_run(app, sock, url, service, log_level))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        signal.signal(signal.SIGTERM, previous_term)
        shutil.rmtree(work, ignore_errors=True)
    print("lavt serve: stopped", flush=True)
    return 0


def build(checkpoint: str | Path | None, device: str, precision: str, concurrency: int, queue_size: int,
          limits: Limits | None, examples: int, work: Path, graphs: str | None = None) -> tuple[Any, SegmentService]:
    """The model, the examples shown on the page, the page and the app."""
    # Imported here, after `serve` set the environment: Gradio reads some of it at import.
    from lavt.serve.app import create_app
    from lavt.serve.examples import make_examples
    from lavt.serve.page import build_page

    print("lavt serve: loading the model ...", flush=True)
    service = SegmentService.load(checkpoint, device=device, precision=precision, limits=limits,
                                  concurrency=concurrency, queue_size=queue_size, graphs=graphs)
    print(f"lavt serve: {service.info['architecture']} from {service.info['checkpoint']} "
          f"on {service.info['device']} ({service.info['precision']})", flush=True)
    chosen = make_examples(service, work / "examples", count=examples) if examples > 0 else []
    page = build_page(service, chosen, work)
    return create_app(service, page), service


async def _run(app: Any, sock: socket.socket, url: str, service: SegmentService, log_level: str) -> None:
    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
                            lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        print(f"lavt serve: ready at {url} (page), {url}v1/segment (REST), {url}healthz; Ctrl-C to stop",
              flush=True)
    try:
        await task
    finally:
        service.gate.close()
        sys.stdout.flush()
