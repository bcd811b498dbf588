"""Command line: `lavt <command> ...`. Parsing only; the work happens in the library.

Each command lives in its own module with `register(subparsers)`, which adds a parser
and sets `func` (called with the parsed namespace; returns an exit code or None).
Heavy imports stay inside the command functions so `lavt --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from lavt.errors import LAVTUserError

COMMANDS = ["convert", "data", "train", "evaluate", "predict", "demo", "serve", "export", "push"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lavt",
        description="LAVT referring image segmentation: convert, data, train, evaluate, predict, demo, serve, export, push.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"lavt.cli.{name}").register(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        code = args.func(args)
    except LAVTUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a command may say where it stopped and how to go on
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))
    return int(code or 0)
