"""common/fsm.StateMachine: legal moves apply and are recorded; illegal ones change nothing."""

from __future__ import annotations

import enum
import logging

import pytest

from llumnix_zmq.common.fsm import IllegalTransition, StateMachine


class Phase(enum.Enum):
    IDLE = 1
    RUNNING = 2
    DONE = 3
    FAILED = 4


TABLE = {
    Phase.IDLE: frozenset({Phase.RUNNING, Phase.FAILED}),
    Phase.RUNNING: frozenset({Phase.DONE, Phase.FAILED, Phase.RUNNING}),
    # DONE: no entry at all -> terminal
    Phase.FAILED: frozenset(),
}


def make() -> StateMachine[Phase]:
    return StateMachine("job-1", Phase.IDLE, TABLE)


def test_initial_state_and_history():
    fsm = make()
    assert fsm.state is Phase.IDLE
    assert fsm.history == [Phase.IDLE]
    assert fsm.name == "job-1"


def test_legal_path_is_recorded_in_order():
    fsm = make()
    fsm.transition(Phase.RUNNING)
    fsm.transition(Phase.RUNNING)  # a self-loop listed in the table is legal
    fsm.transition(Phase.DONE)
    assert fsm.state is Phase.DONE
    assert fsm.history == [Phase.IDLE, Phase.RUNNING, Phase.RUNNING, Phase.DONE]


@pytest.mark.parametrize("source", list(Phase))
@pytest.mark.parametrize("target", list(Phase))
def test_every_pair_is_legal_exactly_when_the_table_says(source, target):
    fsm = StateMachine("x", source, TABLE)
    legal = target in TABLE.get(source, frozenset())
    assert fsm.can(target) is legal
    if legal:
        fsm.transition(target)
        assert fsm.state is target
        assert fsm.history == [source, target]
    else:
        with pytest.raises(IllegalTransition) as info:
            fsm.transition(target)
        assert str(info.value) == f"x: {source.name} -> {target.name}"
        assert fsm.state is source
        assert fsm.history == [source]


def test_illegal_transition_is_logged(caplog):
    fsm = make()
    with caplog.at_level(logging.WARNING, logger="llumnix_zmq.common.fsm"):
        with pytest.raises(IllegalTransition):
            fsm.transition(Phase.DONE)
    assert caplog.messages == ["job-1: illegal transition IDLE -> DONE"]


def test_state_missing_from_table_is_terminal():
    fsm = StateMachine("t", Phase.DONE, TABLE)
    assert not any(fsm.can(p) for p in Phase)


def test_failure_after_partial_progress_keeps_history():
    fsm = make()
    fsm.transition(Phase.RUNNING)
    fsm.transition(Phase.FAILED)
    with pytest.raises(IllegalTransition):
        fsm.transition(Phase.RUNNING)
    assert fsm.history == [Phase.IDLE, Phase.RUNNING, Phase.FAILED]
