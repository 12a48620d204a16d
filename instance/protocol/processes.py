"""Facts about local processes that both sides need (the sandbox's server, the agent that
started the training ranks)."""
from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int | None) -> bool:
    """True while a process with this id runs. A zombie (ended, not yet reaped by its parent)
    counts as gone: signal 0 still reaches it, so Linux's /proc is asked first."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return False
    except OSError:
        pass
    else:
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    try:  # no /proc (macOS)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True
