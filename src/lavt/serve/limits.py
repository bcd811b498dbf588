"""What one request may ask of the server, and how many requests may wait for the model.

Every limit fails with a `RequestRejected` whose message says what was wrong and what to do;
the REST API answers it as `{"error": ...}` with its `status`, the page as an error toast.
A full queue raises `ServerBusy` (HTTP 503) at once, so waiting requests cannot pile up
memory. No web framework is imported here: the page and the REST API share these rules.
"""
from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError

from lavt.errors import LAVTUserError
from lavt.inference import load_image

T = TypeVar("T")
MB = 1024 * 1024


class RequestRejected(LAVTUserError):
    """A request the server will not run; `status` is its HTTP status (400 or 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ServerBusy(RuntimeError):
    """Every running slot and queue place is taken; the client should retry later."""


@dataclass(frozen=True)
class Limits:
    """Per-request limits: upload bytes, decoded image pixels, expressions per request."""

    max_upload_bytes: int = 20 * MB
    max_pixels: int = 40_000_000
    max_expressions: int = 16

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_expressions"):
            if int(getattr(self, name)) < 1:
                raise LAVTUserError(f"{name} must be at least 1, got {getattr(self, name)}")

    def describe(self) -> str:
        return (f"uploads up to {self.max_upload_bytes / MB:g} MB, images up to "
                f"{self.max_pixels / 1e6:g} MP, up to {self.max_expressions} expressions per request")


def too_large(size: int, limits: Limits) -> RequestRejected:
    return RequestRejected(
        f"the upload is {size / MB:.1f} MB, more than the server's limit of {limits.max_upload_bytes / MB:g} MB; "
        "send a smaller or more compressed image",
        status=413,
    )


def split_expressions(values: str | Iterable[str], limits: Limits) -> list[str]:
    """Expressions from one text (one per line) or several fields (each may hold lines).

    Blank lines around a field are ignored (a trailing newline is natural in a text box);
    a blank line between expressions, or an empty field, is an error naming its position,
    because silently dropping it would shift every later result.
    """
    fields = [values] if isinstance(values, str) else list(values)
    expressions: list[str] = []
    for value in fields:
        if not isinstance(value, str):
            raise RequestRejected(f"expressions must be text, got {type(value).__name__}")
        lines = [line.strip() for line in value.strip().splitlines()]
        if not lines:
            lines = [""]
        for line in lines:
            if not line:
                raise RequestRejected(
                    f"expression {len(expressions) + 1} is empty; write one expression per line "
                    "describing the object to segment, e.g. 'the red circle'"
                )
            expressions.append(line)
    if not expressions:
        raise RequestRejected("no expressions given; send at least one, e.g. 'the red circle'")
    if len(expressions) > limits.max_expressions:
        raise RequestRejected(
            f"{len(expressions)} expressions given, more than the server's limit of {limits.max_expressions} "
            "per request; split them over several requests"
        )
    return expressions


def read_image(source: bytes | str | Path, limits: Limits) -> Image.Image:
    """Decode an uploaded image to RGB after checking its size from the header alone, so a
    decompression bomb (a small file that decodes to a huge image) is refused unopened."""
    try:
        if isinstance(source, (str, Path)):
            size = Path(source).stat().st_size
            if size > limits.max_upload_bytes:
                raise too_large(size, limits)
            handle: Any = open(source, "rb")
        else:
            if len(source) > limits.max_upload_bytes:
                raise too_large(len(source), limits)
            handle = io.BytesIO(source)
    except OSError as exc:
        raise RequestRejected(f"the uploaded image cannot be read: {exc}") from exc
    with handle:
        try:
            im = Image.open(handle)
        except Image.DecompressionBombError as exc:
            raise RequestRejected(f"the image is too large to decode ({exc}); the limit is "
                                  f"{limits.max_pixels / 1e6:g} MP", status=413) from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise RequestRejected(
                "the upload is not a readable image (PNG, JPEG, WebP, BMP, TIFF or GIF); "
                f"check the file: {exc}"
            ) from exc
        with im:
            pixels = im.width * im.height
            if pixels > limits.max_pixels:
                raise RequestRejected(
                    f"the image is {im.width} x {im.height} = {pixels / 1e6:.1f} MP, more than the server's "
                    f"limit of {limits.max_pixels / 1e6:g} MP; resize it first",
                    status=413,
                )
            try:
                im.load()
                return load_image(im)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                raise RequestRejected(f"the image cannot be decoded (damaged or truncated file?): {exc}") from exc


class Gate:
    """At most `concurrency` model calls at once and `queue_size` more waiting; beyond that
    `enter()` raises `ServerBusy` immediately instead of queueing without bound.

    The model runs on a pool of `concurrency` threads, so a waiting request holds no thread:
    REST handlers await `run_async`, the page's worker threads call `run`.
    """

    def __init__(self, concurrency: int = 1, queue_size: int = 32) -> None:
        if int(concurrency) < 1:
            raise LAVTUserError(f"--concurrency must be at least 1, got {concurrency}")
        if int(queue_size) < 0:
            raise LAVTUserError(f"--queue-size must be 0 or more, got {queue_size}")
        self.concurrency = int(concurrency)
        self.queue_size = int(queue_size)
        self._lock = threading.Lock()
        self._admitted = 0
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="lavt-model")

    @property
    def admitted(self) -> int:
        """Requests running or waiting now."""
        return self._admitted

    def enter(self) -> None:
        with self._lock:
            if self._admitted >= self.concurrency + self.queue_size:
                raise ServerBusy(
                    f"the server is busy ({self.concurrency} running, {self.queue_size} waiting); retry in a moment"
                )
            self._admitted += 1

    def leave(self) -> None:
        with self._lock:
            self._admitted -= 1

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on a model thread and wait (the caller must have entered)."""
        return self._pool.submit(fn, *args).result()

    async def run_async(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
