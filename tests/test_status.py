import itertools

import pytest

from instance.protocol.status import MAIN_CHAIN, TRANSITIONS, IllegalTransition, Status, can_move, check_move

S = Status
EXPECTED_ALLOWED = {
    (S.INITIALIZATION, S.DATA_SYNC),
    (S.DATA_SYNC, S.TRAINING),
    (S.TRAINING, S.FORECAST),
    (S.DATA_SYNC, S.FORECAST),  # a forecast-only run
    (S.FORECAST, S.RESULTS_SYNC),
    (S.RESULTS_SYNC, S.CLEANUP),
    *{(s, t) for s in (S.INITIALIZATION, S.DATA_SYNC, S.TRAINING, S.FORECAST, S.RESULTS_SYNC)
      for t in (S.FAILED, S.KILLED)},
    (S.FAILED, S.CLEANUP),
    (S.KILLED, S.CLEANUP),
}


@pytest.mark.parametrize("current,target", list(itertools.product(Status, Status)), ids=lambda s: s.value)
def test_every_pair_is_allowed_or_refused_as_the_design_says(current, target):
    expected = (current, target) in EXPECTED_ALLOWED
    assert can_move(current, target) is expected
    if expected:
        assert check_move(current.value, target.value) is target
    else:
        with pytest.raises(IllegalTransition, match=f"from {current.value} to {target.value}"):
            check_move(current, target)


def test_terminal_statuses():
    assert {s for s in Status if s.is_terminal} == {S.CLEANUP, S.FAILED, S.KILLED}
    assert MAIN_CHAIN[0] is S.INITIALIZATION and MAIN_CHAIN[-1] is S.CLEANUP
    assert TRANSITIONS[S.CLEANUP] == frozenset()


def test_unknown_status_is_refused():
    with pytest.raises(ValueError):
        can_move("training", "paused")
