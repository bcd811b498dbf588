"""int8 graphs beside the float32 ones, with onnxruntime's quantization.

`dynamic`: the weights of every matrix product with a constant operand (the linear layers of
Swin, PWAM, the gates and BERT) stored as int8, the activations quantised per call (uint8);
convolutions, attention products and norms stay float32. `static`: the same linear layers,
plus the convolutions (patch embedding and the decoder), as QDQ with activation ranges
calibrated on generated scenes with written expressions.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lavt.errors import LAVTUserError

METHODS = ("dynamic", "static")


def quantize_dynamic_graph(source: Path, target: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional dependency: the `onnx` extra

    with _quiet():
        quantize_dynamic(source, target, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                         per_channel=False, extra_options={"MatMulConstBOnly": True})
    return target


def quantize_static_graph(source: Path, target: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """QDQ int8 for the linear layers and convolutions, activation ranges from `feeds`."""
    from onnxruntime.quantization import (  # optional dependency: the `onnx` extra
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    with _quiet():
        quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"MatMulConstBOnly": True})
    return target


def check_method(method: str) -> str:
    if method not in METHODS:
        raise LAVTUserError(f"int8 method must be one of {', '.join(METHODS)}, got {method!r}")
    return method


class _quiet:
    """onnxruntime's quantizer logs advice on every call through the root logger."""

    def __enter__(self) -> None:
        self._level = logging.root.level
        logging.root.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.root.setLevel(self._level)
