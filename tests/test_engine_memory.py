"""glibc keeps freed blocks for reuse once `keep_freed_memory` is called (CPU training)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lavt.engine.memory import keep_freed_memory

# Five 20 MB blocks allocated, written and freed eleven times; prints the page faults of rounds
# 2-11 summed. By default glibc trims the freed heap top (100 MB > its trim threshold) and rounds
# fault their pages in again (not every round: glibc also moves its mmap threshold as blocks are
# freed). With the setting the blocks stay mapped; one block still refaults now and then on some
# machines, so the test sums ten rounds rather than trusting one.
_PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from lavt.engine.memory import keep_freed_memory
    assert keep_freed_memory()
def round_():
    blocks = [torch.ones(5 << 20) for _ in range(5)]
    del blocks
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round_()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc setting")
def test_keep_freed_memory_stops_refaulting_the_same_blocks():
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
    pages = 5 * (20 << 20) // 4096  # one round's pages
    default, kept = _faults("default"), _faults("keep")
    assert default > pages, default
    assert kept < default // 4, (kept, default)
