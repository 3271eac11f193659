"""Which running requests a migration source picks, per policy."""

import pytest

from llumnix_zmq.engine.base import MigrationCandidate
from llumnix_zmq.protocol.messages import Priority
from llumnix_zmq.scheduler.policy import select_requests

N, H = Priority.NORMAL, Priority.HIGH


def cand(rid, since, blocks, prio=N):
    return MigrationCandidate(rid, num_tokens=blocks * 16, num_blocks=blocks, priority=prio,
                              arrival_time=since - 0.5, running_since=since)


CANDS = [cand("a", 1.0, 5), cand("b", 3.0, 10, H), cand("c", 2.0, 2), cand("d", 3.0, 8)]


def ids(policy, n=4, cands=CANDS, **kw):
    return [c.request_id for c in select_requests(cands, n, policy, **kw)]


def test_shortest_running_is_default():
    # largest running_since first; b and d tie on it -> by id
    assert ids("shortest-running") == ["b", "d", "c", "a"]
    assert [c.request_id for c in select_requests(CANDS, 2)] == ["b", "d"]


def test_longest_running():
    assert ids("longest") == ["a", "c", "b", "d"]
    assert ids("longest-running") == ["a", "c", "b", "d"]


def test_fewest_blocks():
    assert ids("fewest-blocks") == ["c", "a", "d", "b"]
    tie = [cand("x", 1.0, 3), cand("y", 2.0, 3)]
    assert ids("fewest-blocks", cands=tie) == ["y", "x"]


def test_lowest_priority():
    assert ids("lowest-priority") == ["d", "c", "a", "b"]


def test_priority_reason_prefers_normal_whatever_the_policy():
    assert ids("shortest-running", n=2, reason="priority") == ["d", "c"]
    assert ids("fewest-blocks", reason="priority") == ["c", "a", "d", "b"]
    only_high = [cand("h1", 1.0, 4, H), cand("h2", 2.0, 4, H)]
    assert ids("shortest-running", n=1, cands=only_high, reason="priority") == ["h2"]


def test_counts_and_duplicates():
    dup = CANDS + [cand("a", 9.0, 1)]  # same id again: the first one counts
    assert ids("shortest-running", n=10, cands=dup) == ["b", "d", "c", "a"]
    assert ids("shortest-running", n=0) == []
    assert ids("shortest-running", n=-1) == []
    assert ids("shortest-running", cands=[]) == []


def test_unknown_policy():
    with pytest.raises(ValueError):
        select_requests(CANDS, 1, "random")


def test_max_blocks_leaves_out_requests_too_big_for_the_destination():
    # b (10 blocks) and d (8) are the shortest-running, but the destination has room for 8
    assert ids("shortest-running", max_blocks=8) == ["d", "c", "a"]
    assert ids("shortest-running", n=1, max_blocks=7) == ["c"]
    assert ids("fewest-blocks", max_blocks=1) == []
    assert ids("shortest-running", max_blocks=None) == ["b", "d", "c", "a"]
