"""A second Ctrl-C during the teardown after a first one is noted, not obeyed; a third abandons."""
from __future__ import annotations

import signal

import pytest

from automation.interrupts import PRESSES_TO_ABANDON, sigint_deferred


def test_presses_during_the_teardown_are_noted_until_the_third(capsys):
    # raise_signal, not os.kill: with other threads alive (earlier tests' servers) the kernel may hand a
    # process-wide signal to one of them, and Python would run the handler a few bytecodes later.
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    done = []
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred("still cleaning up"):
            for _ in range(PRESSES_TO_ABANDON - 1):
                signal.raise_signal(signal.SIGINT)
                done.append("survived")
            signal.raise_signal(signal.SIGINT)
            done.append("never")
    assert done == ["survived"] * (PRESSES_TO_ABANDON - 1)
    err = capsys.readouterr().err
    assert err.count("still cleaning up") == PRESSES_TO_ABANDON - 1 and "verify-cleanup --fix" in err
    assert signal.getsignal(signal.SIGINT) is before, "the handler is put back"
