"""Strict state_dict loading that explains every mismatch.

`torch.nn.Module.load_state_dict(strict=True)` stops at the first problem with a long
traceback; here every missing, unexpected and misshaped key is listed in one
`LAVTUserError`, with the likely cause (another window size, no text encoder, other depths).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lavt.errors import LAVTUserError


def _likely_causes(model: nn.Module, missing: list[str], unexpected: list[str], misshaped: list[str]) -> list[str]:
    causes = []
    cfg = getattr(model, "config", None)
    if any("relative_position" in k for k in misshaped) and cfg is not None:
        causes.append(
            f"the relative position tables differ in size: the weights were trained with another window "
            f"size than this model's {cfg.window_size} (LAVT's released weights use window 12, Swin's "
            "default is 7); use lavt.load_official, which reads the window from the weights"
        )
    if any(k.startswith("text_encoder.") for k in missing) and not any(k.startswith("text_encoder.") for k in unexpected):
        causes.append("the weights hold no text encoder (an official `lavt` model without its 'bert_model')")
    if any(k.endswith("position_ids") for k in unexpected):
        causes.append("'position_ids' comes from another transformers version; it is a constant and can be dropped")
    if any(".blocks." in k for k in missing + unexpected) and not misshaped:
        causes.append("the stage depths differ (e.g. Swin tiny [2,2,6,2] vs base [2,2,18,2])")
    return causes


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load that explains every mismatch (missing, unexpected, misshaped keys, likely cause)."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("embeddings.position_ids")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshaped:

        def show(name: str, items: list[str]) -> str:
            head = "; ".join(items[:6]) + (f"; ... ({len(items)} in all)" if len(items) > 6 else "")
            return f"{name} ({len(items)}): {head}" if items else ""

        parts = [show("missing", missing), show("unexpected", unexpected), show("misshaped", misshaped)]
        causes = _likely_causes(model, missing, unexpected, [m.split(":")[0] for m in misshaped])
        msg = f"{source} does not fit the model: " + " | ".join(p for p in parts if p)
        if causes:
            msg += ". Likely cause: " + "; ".join(causes)
        raise LAVTUserError(msg)
    model.load_state_dict(state, strict=True)
