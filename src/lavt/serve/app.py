"""The FastAPI application: `GET /healthz`, `GET /v1/model`, `POST /v1/segment`, and the page.

`POST /v1/segment` takes multipart form data: an `image` file, `expressions` (one per line,
or the field repeated) and optionally `format` (`rle`, the default, or `png`). Every refusal
is a JSON `{"error": message}` with a 4xx status (503 when the queue is full), never a
traceback; the server keeps serving.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from lavt.serve.limits import RequestRejected, ServerBusy, read_image, split_expressions, too_large
from lavt.serve.service import SegmentService, to_json

SEGMENT_PATH = "/v1/segment"
FORM_FIELDS = {"image", "expressions", "format"}


class BodyTooLarge(Exception):
    """Raised from the counting `receive` when a body grows past the upload limit."""


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class UploadLimit:
    """ASGI middleware for `POST /v1/segment`: a declared Content-Length over the limit is
    refused before the body is read, and a body without one (chunked) is counted as it
    arrives, so no request can make the server store more than the limit."""

    def __init__(self, app: Any, service: SegmentService) -> None:
        self.app = app
        self.limit = service.limits.max_upload_bytes
        self.limits = service.limits

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != SEGMENT_PATH:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await error(413, str(too_large(int(value), self.limits)))(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(seen)
            return message

        await self.app(scope, counting_receive, send)


def create_app(service: SegmentService, page: Any = None) -> FastAPI:
    """The REST routes on `service`; `page` (a Gradio Blocks from `page.build_page`) is
    mounted at `/` after them when given."""
    app = FastAPI(title="lavt serve", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)
    app.state.service = service

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model_loaded": True, "model": service.name, "device": service.info["device"],
                "precision": service.info["precision"], "admitted": service.gate.admitted}

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        return dict(service.info, limits={
            "max_upload_bytes": service.limits.max_upload_bytes, "max_pixels": service.limits.max_pixels,
            "max_expressions": service.limits.max_expressions, "concurrency": service.gate.concurrency,
            "queue_size": service.gate.queue_size,
        })

    @app.post(SEGMENT_PATH)
    async def segment(request: Request) -> JSONResponse:
        try:
            service.gate.enter()  # before the body is stored: a full queue costs no memory
        except ServerBusy as exc:
            await _discard_body(request)
            return error(503, str(exc), {"Retry-After": "1"})
        try:
            return await _segment(service, request)
        except RequestRejected as exc:
            return error(exc.status, str(exc))
        except BodyTooLarge as exc:
            return error(413, str(too_large(int(exc.args[0]), service.limits)))
        finally:
            service.gate.leave()

    app.add_middleware(UploadLimit, service=service)
    if page is not None:
        from lavt.serve.page import mount_page  # gradio: only when the page is served

        app = mount_page(app, page, service)
    return app


async def _discard_body(request: Request) -> None:
    """Read the body and drop it chunk by chunk: a client still sending its upload when the
    answer comes would otherwise see the connection reset instead of the answer."""
    try:
        async for _ in request.stream():
            pass
    except (BodyTooLarge, ClientDisconnect):
        pass


async def _segment(service: SegmentService, request: Request) -> JSONResponse:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestRejected("send multipart/form-data with an 'image' file and 'expressions' "
                              "(e.g. curl -F image=@photo.jpg -F expressions='the red car')", status=415)
    try:
        form = await request.form(max_files=1, max_fields=64)
    except BodyTooLarge:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is a malformed request
        raise RequestRejected(f"the form data cannot be read: {exc}") from exc
    try:
        unknown = sorted(set(form.keys()) - FORM_FIELDS)
        if unknown:
            raise RequestRejected(f"unknown form fields {unknown}; use 'image', 'expressions' and optionally 'format'")
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise RequestRejected("no image file: send it as the multipart file field 'image' (curl -F image=@photo.jpg)")
        texts = form.getlist("expressions")
        if not texts:
            raise RequestRejected("no 'expressions' field: send one per line or repeat the field")
        if any(not isinstance(t, str) for t in texts):
            raise RequestRejected("'expressions' must be text fields, not files")
        fmt = form.get("format") or "rle"
        if fmt not in ("rle", "png"):
            raise RequestRejected(f"format must be 'rle' or 'png', got {str(fmt)[:20]!r}")
        expressions = split_expressions(texts, service.limits)
        data = await upload.read()
    finally:
        await form.close()
    image = await run_in_threadpool(read_image, data, service.limits)
    del data
    result = await service.gate.run_async(service.predict, image, expressions)
    return JSONResponse(to_json(result, service.name, str(fmt)))
