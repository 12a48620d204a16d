"""Ctrl-C while a command cleans up after an earlier Ctrl-C."""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def sigint_deferred(notice: str) -> Iterator[None]:
    """Inside the block a SIGINT is noted and answered with `notice` instead of raising: the
    teardown after a first Ctrl-C (destroy what was made, release the lock) must not be cut
    short by a second one. Only the main thread can own signal handlers; elsewhere this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum, frame) -> None:
        print(f"chronos-train: {notice}", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
