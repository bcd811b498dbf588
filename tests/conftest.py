"""pytest fixtures; the shared helpers themselves are in helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import GOLDEN

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
