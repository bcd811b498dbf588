"""`lavt serve` as a subprocess on a free loopback port, used as a person would (headless
Chromium through playwright) and as clients would (REST and the Gradio API under load).

The browser tests skip when no Chromium is found, except when LAVT_REQUIRE_BROWSER=1 (set by
`.ci/run`), where that is a failure. LAVT_SCREENSHOT=path keeps the page's screenshot there
(the README's picture is made this way).
"""
from __future__ import annotations

import concurrent.futures as futures
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the 'web' extra is not installed (pip install -e '.[web]')")
httpx = pytest.importorskip("httpx")
from PIL import Image  # noqa: E402

from lavt.demo import shipped_model_dir  # noqa: E402
from lavt.inference import Predictor  # noqa: E402
from lavt.serve.examples import make_examples  # noqa: E402
from lavt.serve.service import SegmentService  # noqa: E402

STARTUP_TIMEOUT = 240  # seconds: model load and example caching on a slow, busy machine
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


class LiveServer:
    """`lavt serve --port 0 ...` in a subprocess; `url` once it printed that it is ready."""

    def __init__(self, *args: str) -> None:
        lavt = Path(sys.executable).with_name("lavt")
        cmd = [str(lavt)] if lavt.exists() else [sys.executable, "-m", "lavt"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd + ["serve", "--host", "127.0.0.1", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(STARTUP_TIMEOUT) or not self.url:
            self.stop()
            raise AssertionError("lavt serve did not start:\n" + "".join(self.lines))
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "healthz", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.stop()
        raise AssertionError("/healthz did not answer:\n" + "".join(self.lines))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "ready at " in line:
                self.url = line.split("ready at ", 1)[1].split()[0]
                self._ready.set()
        self._ready.set()

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self, sig: int = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def server():
    srv = LiveServer("--queue-size", "16", "--examples", "2")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_pretrained(shipped_model_dir())


@pytest.fixture(scope="module")
def scene(predictor, tmp_path_factory):
    """A generated scene with two expressions the shipped model segments well."""
    service = SegmentService(predictor, str(shipped_model_dir()))
    try:
        (example,) = make_examples(service, tmp_path_factory.mktemp("scene"), count=1, seed=21)
    finally:
        service.gate.close()
    return example


def _chromium() -> str:
    path = os.environ.get("LAVT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and Path("/usr/bin/chromium").exists():
        path = "/usr/bin/chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
        reason = "the playwright package is not installed (pip install -e '.[dev]')"
    else:
        reason = "no Chromium found (Debian: apt-get install chromium; or set LAVT_CHROMIUM)"
    if path is None:
        if os.environ.get("LAVT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LAVT_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser_page(server):
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    profile = tempfile.mkdtemp(prefix="lavt-chromium-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=chromium, args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1200, "height": 900},
            )
            context.set_default_timeout(60_000)
            try:
                page = context.new_page()
                outside: list[str] = []
                page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(server.url) and
                        not r.url.startswith(("data:", "blob:")) else None)
                page.goto(server.url, wait_until="networkidle", timeout=120_000)
                page.outside_requests = outside  # type: ignore[attr-defined]
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _segment_in_page(page, image: Path | None, text: str) -> None:
    if image is not None:
        remove = page.locator("#lavt-image button[aria-label='Remove Image']")
        if remove.count():
            remove.click()
        page.locator("#lavt-image input[type=file]").set_input_files(str(image))
        page.locator("#lavt-image img").wait_for()
    page.get_by_label("Expressions").fill(text)
    page.get_by_role("button", name="Segment").click()


def test_browser_segments_two_expressions(browser_page, server, scene, predictor, tmp_path):
    page = browser_page
    first, second = scene.expressions
    _segment_in_page(page, scene.image, f"{first}\n{second}")
    legend = page.locator("#lavt-legend-entries")
    legend.filter(has_text=second).wait_for(timeout=120_000)
    assert [e.strip() for e in legend.locator(".lavt-legend-label").all_inner_texts()] == [f"1. {first}", f"2. {second}"]
    links = page.locator("#lavt-masks a[data-testid=download-link]")
    links.nth(1).wait_for()
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert len(hrefs) == 2 and "mask_1_" in hrefs[0] and "mask_2_" in hrefs[1]
    expected = predictor.predict(scene.image, [first, second])
    for href, pred in zip(hrefs, expected):
        got = np.asarray(Image.open(io.BytesIO(page.request.get(href).body())).convert("L")) > 127
        assert got.shape == pred.mask.shape
        undecided = np.abs(pred.probability - 0.5) < 1e-3  # a pixel at P = 0.5 may flip between processes
        np.testing.assert_array_equal(got[~undecided], pred.mask[~undecided])
        assert pred.mask.sum() > 0
    assert page.locator("#lavt-result img").count() == 1
    assert page.outside_requests == [], "the page reached outside the server"
    shot = Path(os.environ.get("LAVT_SCREENSHOT") or tmp_path / "web_demo.png")
    page.screenshot(path=str(shot), full_page=True)
    small = Image.open(shot).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(shot, format="PNG", optimize=True)
    assert shot.stat().st_size < 200_000


def test_browser_empty_expression_shows_error_then_works(browser_page, scene):
    page = browser_page
    _segment_in_page(page, None, "   ")
    page.get_by_text("expression 1 is empty").first.wait_for(timeout=60_000)
    _segment_in_page(page, None, scene.expressions[1])
    page.locator("#lavt-legend-entries").filter(has_text=f"1. {scene.expressions[1]}").wait_for(timeout=120_000)
    assert page.locator("#lavt-masks a[data-testid=download-link]").count() == 1


def test_probability_switch(browser_page):
    page = browser_page
    page.get_by_label("Show the probability map instead of the mask").check()
    page.locator("#lavt-probability img").wait_for()
    assert not page.locator("#lavt-result").is_visible()
    page.get_by_label("Show the probability map instead of the mask").uncheck()
    page.locator("#lavt-result img").wait_for()


def _rest(url: str, image: bytes, text: str) -> tuple[int, dict]:
    r = httpx.post(url + "v1/segment", files={"image": ("s.jpg", image, "image/jpeg")},
                   data={"expressions": text}, timeout=300)
    return r.status_code, r.json()


def test_load_rest_and_gradio_api(server, scene, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    image = scene.image.read_bytes()
    text = "\n".join(scene.expressions)
    client = Client(server.url, verbose=False, download_files=str(tmp_path))
    with futures.ThreadPoolExecutor(50) as pool:
        start = time.perf_counter()
        rest = [pool.submit(_rest, server.url, image, text) for _ in range(50)]
        jobs = [client.submit(handle_file(str(scene.image)), text, api_name="/segment") for _ in range(20)]
        answers = [f.result(timeout=600) for f in rest]
        page_answers = []
        for job in jobs:
            try:
                page_answers.append(job.result(timeout=600))
            except (QueueError, AppError) as exc:
                page_answers.append(exc)
        elapsed = time.perf_counter() - start
    statuses = [status for status, _ in answers]
    assert all(s in (200, 503) for s in statuses), statuses
    assert statuses.count(200) >= 1
    for status, body in answers:
        if status == 200:
            assert [x["expression"] for x in body["results"]] == scene.expressions
        else:
            assert "busy" in body["error"]
    done = [a for a in page_answers if not isinstance(a, Exception)]
    assert len(done) >= 1
    for answer in page_answers:
        if isinstance(answer, Exception):
            assert "busy" in str(answer).lower() or "queue is full" in str(answer).lower(), answer
        else:
            assert len(answer[4]) == 2 and scene.expressions[0] in answer[2]
    print(f"\n50 REST + 20 Gradio API requests in {elapsed:.1f} s: REST {statuses.count(200)} done, "
          f"{statuses.count(503)} busy; Gradio {len(done)} done")
    assert httpx.get(server.url + "healthz", timeout=30).json()["status"] == "ok"
    assert _rest(server.url, image, text)[0] == 200


def test_sequential_requests_do_not_leak(server, scene):
    image = scene.image.read_bytes()
    text = scene.expressions[0]
    for _ in range(20):  # warm up allocator pools and caches
        assert _rest(server.url, image, text)[0] == 200
    before = server.rss_kb()
    for _ in range(200):
        assert _rest(server.url, image, text)[0] == 200
    growth_mb = (server.rss_kb() - before) / 1024
    print(f"\nserver memory: {before / 1024:.0f} MB after warm-up, {growth_mb:+.1f} MB after 200 more requests")
    assert growth_mb < 40, f"the server's memory grew {growth_mb:.1f} MB over 200 requests"


def test_ctrl_c_stops_cleanly(server):
    """Last in the file: stops the module's server (a fresh one when run alone)."""
    assert server.stop(signal.SIGINT) == 0
    assert "lavt serve: stopped" in "".join(server.lines)
