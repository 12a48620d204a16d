"""A background daemon thread that does one small job every few seconds (heartbeat, kill
check, log upload) until it is stopped."""
from __future__ import annotations

import logging
import threading

from ..protocol.state import Fenced

log = logging.getLogger(__name__)


class Periodic:
    """Calls `tick()` every `interval` seconds. A failed tick is logged and the next one tries
    again (botocore has already retried the call); Fenced ends the thread, since this agent may
    no longer write."""

    name = "periodic"

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Fenced as exc:
                log.error("%s stops: %s", self.name, exc)
                return
            except Exception as exc:
                log.warning("%s failed: %s: %s", self.name, type(exc).__name__, exc)
