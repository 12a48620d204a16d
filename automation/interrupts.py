"""Ctrl-C while a command cleans up after an earlier Ctrl-C."""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

# A person who presses Ctrl-C this many more times during the cleanup means it: stop.
PRESSES_TO_ABANDON = 3


@contextmanager
def sigint_deferred(notice: str) -> Iterator[None]:
    """Inside the block a SIGINT is answered with `notice` instead of raising: the teardown
    after a first Ctrl-C (destroy what was made, release the lock) must not be cut short by a
    second one. A third press abandons the teardown (KeyboardInterrupt), leaving the rest to
    `verify-cleanup --fix`. Only the main thread can own signal handlers; elsewhere this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    presses = 0

    def note(signum, frame) -> None:
        nonlocal presses
        presses += 1
        if presses >= PRESSES_TO_ABANDON:
            print("chronos-train: cleanup abandoned; `chronos-train verify-cleanup --fix` finishes it",
                  file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        print(f"chronos-train: {notice} (Ctrl-C {PRESSES_TO_ABANDON - presses} more time(s) to abandon it)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
