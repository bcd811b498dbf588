"""pytest fixtures; the shared helpers themselves are in helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import GOLDEN
from onnx_helpers import tiny_export

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden vectors not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny tensors run faster so on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def onnx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tiny models and their exports shared by the export, runtime and hub tests live."""
    return tmp_path_factory.getbasetemp() / "onnx"


@pytest.fixture(scope="session")
def exported(onnx_root: Path) -> Path:
    """The tiny model exported with default options (float32, full graph)."""
    return tiny_export(onnx_root)
