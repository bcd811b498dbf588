"""Metrics as text: the one table layout of `lavt evaluate` and `lavt demo`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

METRIC_KEYS: tuple[str, ...] = ("oIoU", "mIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9")


def metrics_table(rows: Sequence[tuple[str, dict[str, float]]], corner: str = "", keys: Sequence[str] = METRIC_KEYS) -> str:
    """One line per (name, metrics) row under a header of the metric names: names padded to
    the longest (or to `corner`, the header's first cell), then each value in percent with
    two decimals (as the official test.py prints) in a column of 8 characters."""
    width = max([len(corner), *(len(name) for name, _ in rows)])
    lines = [f"{corner:<{width}}  " + "  ".join(f"{k:>6}" for k in keys)]
    for name, m in rows:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{m[k]:6.2f}" for k in keys))
    return "\n".join(lines)


def format_table(report: dict[str, Any]) -> str:
    """An evaluation report (`EvalResult.report`): what was scored, then both protocols."""
    c = report["counts"]
    head = (
        f"{report['dataset']} ({report['split_by']}) {report['split']}: {c['expressions']} expressions, "
        f"{c['refs']} objects, {c['images']} images; checkpoint {report['checkpoint']}"
    )
    names = {"official": f"official {report['image_size']}x{report['image_size']}", "original": "original resolution"}
    rows = [(names.get(proto, proto), m) for proto, m in report["metrics"].items()]
    return "\n".join([head, metrics_table(rows, corner="protocol")])
