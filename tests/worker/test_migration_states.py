"""Both migration state machines: every legal edge is taken, every other one is refused."""

from __future__ import annotations

import pytest

from llumnix_zmq.common.fsm import IllegalTransition
from llumnix_zmq.worker.migration.states import (DESTINATION_TABLE, SOURCE_TABLE, DstState,
                                                 SrcState, destination_fsm, source_fsm)

CASES = [(SrcState, SOURCE_TABLE, source_fsm), (DstState, DESTINATION_TABLE, destination_fsm)]


def _reach(make, table, initial, target):
    """A machine driven along legal edges from the initial state to ``target``."""
    fsm = make("t")
    path, frontier, seen = {initial: []}, [initial], {initial}
    while frontier:
        s = frontier.pop(0)
        for nxt in table[s]:
            if nxt not in seen:
                seen.add(nxt)
                path[nxt] = path[s] + [nxt]
                frontier.append(nxt)
    for s in path[target]:
        fsm.transition(s)
    return fsm


@pytest.mark.parametrize("enum,table,make", CASES, ids=["source", "destination"])
def test_every_state_is_reachable_and_listed(enum, table, make):
    assert set(table) == set(enum)
    for state in enum:
        assert _reach(make, table, enum.NEW, state).state is state


@pytest.mark.parametrize("enum,table,make", CASES, ids=["source", "destination"])
def test_every_edge_legal_and_every_other_refused(enum, table, make):
    for a in enum:
        for b in enum:
            fsm = _reach(make, table, enum.NEW, a)
            if b in table[a]:
                fsm.transition(b)
                assert fsm.state is b and fsm.history[-2:] == [a, b]
            else:
                with pytest.raises(IllegalTransition):
                    fsm.transition(b)
                assert fsm.state is a


def test_terminal_states_have_no_exit():
    for table, ends in ((SOURCE_TABLE, (SrcState.DONE, SrcState.ABORTED)),
                        (DESTINATION_TABLE, (DstState.COMMITTED, DstState.ABORTED))):
        assert all(not table[s] for s in ends)
        assert all(table[s] for s in table if s not in ends)
