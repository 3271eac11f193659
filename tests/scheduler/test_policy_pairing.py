"""Migration pairing: who is a source, who a destination, in which order, and why."""

import math
import random

from llumnix_zmq.protocol.messages import (
    InstanceInfo,
    InstanceLoad,
    InstanceState,
    Priority,
    RequestLoad,
)
from llumnix_zmq.scheduler.policy import MigrationPair, PolicyConfig, pair_migrations
from llumnix_zmq.scheduler.policy.freeness import freeness

CFG = PolicyConfig(
    headroom_blocks=4, migrate_out_threshold=3.0, migrate_in_threshold=10.0,
    report_staleness_s=1.0,
)
NOW = 12.5


def req(rid, blocks, *, running=True, high=False):
    return RequestLoad(rid, blocks, Priority.HIGH if high else Priority.NORMAL, running=running)


def inst(iid, *reqs, total=100, state=InstanceState.ACTIVE, age=0.0, draining=False,
         mig_out=0, mig_in=0):
    run = [r for r in reqs if r.running]
    ld = InstanceLoad(
        total, sum(r.num_blocks for r in run), len(run), len(reqs) - len(run),
        requests=tuple(reqs), draining=draining, num_migrating_out=mig_out,
        num_migrating_in=mig_in,
    )
    return InstanceInfo(iid, f"tcp://{iid}", state, ld, report_age_s=age)


A = inst("A", req("a1", 49), req("a2", 49))  # F = 1.0
B = inst("B", req("b1", 47), req("b2", 48))  # F = 2.5
C = inst("C", req("c1", 50))  # F = 50.0
D = inst("D", req("d1", 20))  # F = 80.0
E = inst("E", req("e1", 95))  # F = 5.0: in the band, neither role


def test_load_balance_most_loaded_with_least_loaded():
    assert [freeness(i.load, CFG) for i in (A, B, C, D, E)] == [1.0, 2.5, 50.0, 80.0, 5.0]
    pairs = pair_migrations([C, B, E, D, A], CFG, NOW)
    assert pairs == [
        MigrationPair("A", "D", "load-balance", 1, 1.0, 80.0, 78),
        MigrationPair("B", "C", "load-balance", 1, 2.5, 50.0, 48),
    ]


def test_more_sources_than_destinations_leaves_the_rest():
    pairs = pair_migrations([A, B, D, E], CFG, NOW)
    assert [(p.source_id, p.destination_id) for p in pairs] == [("A", "D")]
    # C's room (48) is one block short for A's smallest request (49): B, next, takes C
    pairs = pair_migrations([A, B, C, E], CFG, NOW)
    assert [(p.source_id, p.destination_id) for p in pairs] == [("B", "C")]
    assert pair_migrations([A, B, E], CFG, NOW) == []


def test_defrag_blocked_head_of_line():
    # 90 used, 10 free, head-of-line needs 20: F = (100 - 90 - 20) / 2 = -5
    s = inst("S", req("r1", 60), req("r2", 30), req("w1", 20, running=False),
             req("w2", 1, running=False))
    assert freeness(s.load, CFG) == -5.0
    assert pair_migrations([s, D], CFG, NOW) == [
        MigrationPair("S", "D", "defrag", 1, -5.0, 80.0, 78)
    ]
    # a waiting request that fits the free blocks is not defrag
    s2 = inst("S2", req("r1", 45), req("r2", 45), req("w", 8, running=False))  # F = 1.0
    assert pair_migrations([s2, D], CFG, NOW)[0].reason == "load-balance"


def test_priority_source():
    # 95 running blocks + 4 headroom = 99: F = 0.5
    p = inst("P", req("h", 40, high=True), req("n", 55))
    assert pair_migrations([p, D], CFG, NOW) == [
        MigrationPair("P", "D", "priority", 1, 0.5, 80.0, 78)
    ]
    # llumnix-base: no headroom (F = 2.5), no priority reason
    base = PolicyConfig(dispatch_policy="llumnix-base")
    assert pair_migrations([p, D], base, NOW) == [
        MigrationPair("P", "D", "load-balance", 1, 2.5, 80.0, 78)
    ]
    # only HIGH requests on it: nothing NORMAL to move off -> load-balance
    only_high = inst("PH", req("h1", 45, high=True), req("h2", 45, high=True))  # F = -1.0
    assert pair_migrations([only_high, D], CFG, NOW)[0].reason == "load-balance"


def test_drain_sources_first_and_move_everything():
    dr = inst("DR", req("x", 5), req("y", 5), req("z", 1), draining=True)  # would be F = 44.5
    st = inst("ST", req("x", 5), state=InstanceState.DRAINING)
    s = inst("S", req("r1", 60), req("r2", 30), req("w1", 20, running=False))  # F = -5
    pairs = pair_migrations([s, C, D, st, dr, inst("F", req("f", 10))], CFG, NOW)
    assert pairs == [
        MigrationPair("DR", "F", "drain", 3, -math.inf, 90.0, 88),
        MigrationPair("ST", "D", "drain", 1, -math.inf, 80.0, 78),
        MigrationPair("S", "C", "defrag", 1, -5.0, 50.0, 48),
    ]
    # a draining instance with nothing running has nothing to migrate
    empty = inst("DE", req("w", 3, running=False), draining=True)
    assert pair_migrations([empty, D], CFG, NOW) == []


def test_stale_dead_and_in_flight_are_left_out():
    table = [
        inst("stale-src", req("r", 99), age=1.01),
        inst("dead-src", req("r", 99), state=InstanceState.DEAD),
        inst("busy-src", req("r", 99), mig_out=1),
        inst("stale-dst", total=1000, age=2.0),
        inst("dead-dst", total=1000, state=InstanceState.DEAD),
        inst("busy-dst", total=1000, mig_in=1),
        inst("recv-src", req("r", 99), mig_in=1),
        A,
        inst("C2", req("c", 40)),  # F = 60, room 58
        # exactly at the staleness limit: fresh, F = 2.0
        inst("edge", req("r1", 49), req("r2", 47), age=1.0),
    ]
    pairs = pair_migrations(table, CFG, NOW)
    assert [(p.source_id, p.destination_id) for p in pairs] == [("A", "C2")]
    pairs = pair_migrations(table + [D], CFG, NOW)
    assert [(p.source_id, p.destination_id) for p in pairs] == [("A", "D"), ("edge", "C2")]


def test_ties_ordered_by_id():
    srcs = [inst(i, req("r1", 50), req("r2", 49)) for i in ("s-10", "s-2")]
    dsts = [inst(i, req("r", 10)) for i in ("d-10", "d-2")]
    pairs = pair_migrations(dsts + srcs, CFG, NOW)
    assert [(p.source_id, p.destination_id) for p in pairs] == [("s-2", "d-2"), ("s-10", "d-10")]


def test_baselines_never_migrate():
    for policy in ("infaas++", "round-robin", "least-queue"):
        assert pair_migrations([A, D], PolicyConfig(dispatch_policy=policy), NOW) == []
    forced = PolicyConfig(dispatch_policy="round-robin", enable_migration=True)
    assert len(pair_migrations([A, D], forced, NOW)) == 1


def test_destination_too_small_for_the_request_is_skipped():
    # G: F = (100 - 80) / 1 = 20 > 10 but room 20 - 2 = 18 blocks; H: room 78
    big = inst("BIG", req("b1", 60), req("b2", 39))  # F = 0.5; smallest running request: 39
    small = inst("SM", req("s1", 90), req("s2", 8))  # F = 1.0; smallest: 8
    g = inst("G", req("g", 80))
    pairs = pair_migrations([big, small, g], CFG, NOW)
    # BIG is the most loaded, but nothing it runs fits G: it waits; SM takes G
    assert pairs == [MigrationPair("SM", "G", "load-balance", 1, 1.0, 20.0, 18)]
    pairs = pair_migrations([big, small, g, D], CFG, NOW)
    assert pairs == [MigrationPair("BIG", "D", "load-balance", 1, 0.5, 80.0, 78),
                     MigrationPair("SM", "G", "load-balance", 1, 1.0, 20.0, 18)]
    # exactly room = need + margin fits
    src = inst("SRC", req("a", 81), req("b", 18))  # F = 0.5, smallest 18 == G's room
    assert pair_migrations([src, g], CFG, NOW)[0].max_blocks == 18
    # a migrating request cannot be sent: the smallest *movable* one counts
    busy = inst("BUSY", req("a", 90), RequestLoad("m", 1, running=True, migrating=True))
    assert pair_migrations([busy, g], CFG, NOW) == []


def test_random_tables_never_double_pair():
    rng = random.Random(7)
    for _ in range(50):
        table = []
        for k in range(40):
            reqs = [req(f"r{j}", rng.randint(1, 30), running=rng.random() < 0.8,
                        high=rng.random() < 0.1) for j in range(rng.randint(0, 8))]
            table.append(inst(f"w-{k}", *reqs, total=rng.choice([50, 100, 200]),
                              draining=rng.random() < 0.05, age=rng.random() * 1.2))
        pairs = pair_migrations(table, CFG, NOW)
        ids = [p.source_id for p in pairs] + [p.destination_id for p in pairs]
        assert len(ids) == len(set(ids))
        for p in pairs:
            assert p.max_blocks is not None and p.max_blocks >= 0
            assert p.source_freeness < CFG.migrate_out_threshold
            assert p.destination_freeness > CFG.migrate_in_threshold
        srcs = [p.source_freeness for p in pairs]
        dsts = [p.destination_freeness for p in pairs]
        assert srcs == sorted(srcs) and dsts == sorted(dsts, reverse=True)
