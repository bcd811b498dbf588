"""Metrics as text: the one table layout of `lavt evaluate` and `lavt demo`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

METRIC_KEYS: tuple[str, ...] = ("oIoU", "mIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9")
GENERALIZED_KEYS: tuple[str, ...] = ("gIoU", "cIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9")


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
    """An evaluation report (`EvalResult.report`): what was scored, then both protocols (for a
    generalised dataset the generalised metrics first, then the classic ones over the
    targeted expressions)."""
    c = report["counts"]
    head = (
        f"{report['dataset']} ({report['split_by']}) {report['split']}: {c['expressions']} expressions, "
        f"{c['refs']} objects, {c['images']} images; checkpoint {report['checkpoint']}"
    )
    names = {"official": f"official {report['image_size']}x{report['image_size']}", "original": "original resolution"}
    rows = [(names.get(proto, proto), m) for proto, m in report["metrics"].items()]
    g = report.get("generalized")
    if not g:
        return "\n".join([head, metrics_table(rows, corner="protocol")])
    m = g["metrics"]["original"]
    rule = g["no_target"] + (f" (threshold {g['no_target_threshold']:.4g}{', picked on this split' if g.get('picked') else ''})"
                             if g["no_target"] == "area" else "")
    grows = [(names.get(proto, proto), v) for proto, v in g["metrics"].items()]
    return "\n".join([
        head,
        f"generalised: {m['no_target']} no-target, {m['targeted']} targeted expressions; no-target rule: {rule}",
        metrics_table(grows, corner="protocol", keys=GENERALIZED_KEYS),
        f"classic metrics over the {m['targeted']} targeted expressions:",
        metrics_table(rows, corner="protocol"),
    ])
