#!/usr/bin/env python
"""Throughput and latency of `lavt serve`'s REST endpoint, measured as a client sees them.

Starts `lavt serve` on a free loopback port (with `--checkpoint`, the shipped demo model by
default, or `--random-swin-b`: a randomly initialised LAVT Swin-B window 12 + BERT-base at
480 px saved to a temporary folder), sends `--warmup` requests, then `--requests` POST
/v1/segment requests from `--clients` concurrent client threads, each one generated scene
with `--expressions` expressions. Prints JSON: requests/s, expressions/s, p50/p95/max
latency (seconds, client side: upload + queue + forward + answer), the status counts, and the
server's resident memory after the run.

    python benchmarks/bench_serve.py --json bench_serve.json                       # shipped model
    python benchmarks/bench_serve.py --random-swin-b --requests 32 --clients 4 --json bench_serve_swinb.json

The server's queue is sized to hold every client (`--queue-size`), so no request is answered
busy unless that is lowered.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image


def random_swin_b(folder: Path, image_size: int) -> Path:
    """A LAVT Swin-B (window 12) + BERT-base with random weights, saved as a model folder."""
    import torch

    from lavt.data.tokenization import ExpressionTokenizer, default_text_encoder_dir
    from lavt.models import BERT_BASE_UNCASED, LAVT, build_config

    torch.manual_seed(0)
    cfg = build_config("base", window_size=12, image_size=image_size, text_encoder=dict(BERT_BASE_UNCASED),
                       text_dim=768)
    model = LAVT(cfg).eval()
    tokenizer = ExpressionTokenizer(default_text_encoder_dir())
    return model.save_pretrained(folder / "swin_b_random", tokenizer=tokenizer, dtype=torch.float16)


def scene(folder: Path, size: tuple[int, int], count: int) -> tuple[bytes, list[str]]:
    """One generated scene's bytes and `count` of its expressions (repeated if it has fewer)."""
    from lavt.data import Refer, generate_synthref

    generate_synthref(folder, seed=99, num_images=4, image_size=size, overwrite=True)
    refer = Refer(folder, "synthref")
    image_id, refs = max(refer.image_refs.items(), key=lambda item: len(item[1]))
    texts = [s["sent"] for r in refs for s in refer.refs[r]["sentences"]]
    return refer.image_path(image_id).read_bytes(), [texts[i % len(texts)] for i in range(count)]


class Server:
    def __init__(self, args: list[str], timeout: float = 900) -> None:
        lavt = Path(sys.executable).with_name("lavt")
        cmd = [str(lavt)] if lavt.exists() else [sys.executable, "-m", "lavt"]
        self.proc = subprocess.Popen(cmd + ["serve", "--host", "127.0.0.1", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.url, self.log = "", []
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:
                self.log.append(line)
                if "ready at " in line:
                    self.url = line.split("ready at ", 1)[1].split()[0]
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise SystemExit("lavt serve did not start:\n" + "".join(self.log))

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def one(url: str, image: bytes, texts: list[str]) -> tuple[int, float]:
    start = time.perf_counter()
    r = httpx.post(url + "v1/segment", files={"image": ("scene.jpg", image, "image/jpeg")},
                   data={"expressions": "\n".join(texts)}, timeout=3600)
    return r.status_code, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="anything `lavt serve --checkpoint` takes (default: the shipped model)")
    ap.add_argument("--random-swin-b", action="store_true", help="a random LAVT Swin-B + BERT-base at --model-size")
    ap.add_argument("--model-size", type=int, default=480, help="input size of the random Swin-B (default 480)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--expressions", type=int, default=2, help="expressions per request (default 2)")
    ap.add_argument("--scene-size", default="480,640", help="generated scene side range in px (default 480,640)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--concurrency", type=int, default=1, help="the server's --concurrency (default 1)")
    ap.add_argument("--queue-size", type=int, default=None, help="the server's --queue-size (default: --clients)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        result = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    checkpoint = args.checkpoint
    if args.random_swin_b:
        checkpoint = str(random_swin_b(work, args.model_size))
    low, high = (int(v) for v in args.scene_size.split(","))
    image, texts = scene(work / "scene", (low, high), args.expressions)
    serve_args = ["--examples", "0", "--device", args.device, "--precision", args.precision,
                  "--concurrency", str(args.concurrency), "--queue-size", str(args.queue_size or args.clients)]
    if checkpoint:
        serve_args += ["--checkpoint", checkpoint]
    server = Server(serve_args)
    try:
        model = httpx.get(server.url + "v1/model", timeout=60).json()
        for _ in range(args.warmup):
            status, _ = one(server.url, image, texts)
            if status != 200:
                raise SystemExit(f"warm-up request answered {status}")
        start = time.perf_counter()
        with futures.ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(lambda _: one(server.url, image, texts), range(args.requests)))
        wall = time.perf_counter() - start
        latencies = [t for status, t in answers if status == 200]
        statuses: dict[str, int] = {}
        for status, _ in answers:
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        result: dict[str, Any] = {
            "model": model["architecture"], "checkpoint": model["checkpoint"], "model_input": model["image_size"],
            "device": model["device"], "precision": model["precision"], "server_concurrency": args.concurrency,
            "clients": args.clients, "requests": args.requests, "expressions_per_request": args.expressions,
            "scene": list(Image.open(io.BytesIO(image)).size),
            "statuses": statuses, "seconds": round(wall, 3),
            "requests_per_s": round(len(latencies) / wall, 3),
            "expressions_per_s": round(len(latencies) * args.expressions / wall, 3),
            "latency_p50_s": round(statistics.median(latencies), 4) if latencies else None,
            "latency_p95_s": round(percentile(latencies, 95), 4) if latencies else None,
            "latency_max_s": round(max(latencies), 4) if latencies else None,
            "server_rss_mb": round(server.rss_mb(), 1),
            "machine": f"{cpu_name()}, {os.cpu_count()} CPUs",
        }
    finally:
        server.stop()
    return result


if __name__ == "__main__":
    main()
