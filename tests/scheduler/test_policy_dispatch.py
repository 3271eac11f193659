"""Dispatch decisions of every policy on crafted instance tables (exact ids and reasons)."""

import random

import pytest

from llumnix_zmq.protocol.messages import (
    InstanceInfo,
    InstanceLoad,
    InstanceState,
    Priority,
    RequestLoad,
)
from llumnix_zmq.scheduler.policy import (
    DISPATCH_POLICIES,
    NoInstance,
    PolicyConfig,
    RoundRobinState,
    dispatch_freeness,
    free_virtual_blocks,
)
from llumnix_zmq.scheduler.policy.dispatch import dispatch

CFG = PolicyConfig(headroom_blocks=4, report_staleness_s=1.0)
NORMAL, HIGH = Priority.NORMAL, Priority.HIGH


def req(rid, blocks, *, running=True, high=False):
    return RequestLoad(rid, blocks, HIGH if high else NORMAL, running=running)


def inst(iid, total, *reqs, state=InstanceState.ACTIVE, age=0.0, draining=False):
    run = [r for r in reqs if r.running]
    ld = InstanceLoad(
        total, sum(r.num_blocks for r in run), len(run), len(reqs) - len(run),
        block_size=16, requests=tuple(reqs), draining=draining,
    )
    return InstanceInfo(iid, f"tcp://{iid}", state, ld, report_age_s=age)


def go(policy, table, tokens=32, prio=NORMAL, seed=0, rr=None, **kw):
    return dispatch(policy, table, tokens, prio, random.Random(seed), rr, cfg=CFG, **kw)


# A: one big request; B: four small ones. NORMAL prefers A (higher F_d), HIGH prefers B (more room).
A = inst("A", 100, req("a1", 40))
B = inst("B", 100, *(req(f"b{k}", 5) for k in range(4)))


def test_llumnix_dispatch_freeness_numbers():
    assert dispatch_freeness(A, 4, 16) == 29.5  # (100 - 40 - 1) / 2
    assert dispatch_freeness(B, 4, 16) == 15.8  # (100 - 20 - 1) / 5
    assert free_virtual_blocks(A, 4) == 60
    assert free_virtual_blocks(B, 4) == 80
    # whole queue counted, new request behind it: (100 - 30 - 10 - 20 - 2) / (1 + 2 + 1)
    q = inst("Q", 100, req("r", 30), req("w1", 10, running=False), req("w2", 20, running=False))
    assert dispatch_freeness(q, 4, 32) == 9.5


def test_llumnix_normal_goes_to_freest():
    assert go("llumnix", [A, B], tokens=16) == ("A", "llumnix:freest")
    assert go("llumnix-base", [A, B], tokens=16) == ("A", "llumnix-base:freest")


def test_llumnix_high_goes_to_most_headroom():
    assert go("llumnix", [A, B], tokens=16, prio=HIGH) == ("B", "llumnix:headroom")
    # llumnix-base ignores priorities: HIGH dispatched like NORMAL
    assert go("llumnix-base", [A, B], tokens=16, prio=HIGH) == ("A", "llumnix-base:freest")


def test_existing_high_requests_reserve_headroom():
    h = inst("H", 100, req("h", 10, high=True))  # H = 100 - 10 - 4 = 86
    n = inst("N", 100, req("n", 10))  # H = 90
    assert go("llumnix", [h, n], prio=HIGH) == ("N", "llumnix:headroom")
    assert go("llumnix", [h, n], prio=NORMAL) == ("N", "llumnix:freest")
    # headroom disabled: the two tie exactly and the seeded rng picks
    cfg0 = PolicyConfig(headroom_blocks=0)
    picks = {dispatch("llumnix", [h, n], 32, NORMAL, random.Random(s), cfg=cfg0)[0]
             for s in range(20)}
    assert picks == {"H", "N"}


def test_high_headroom_tie_prefers_smaller_batch():
    two = inst("two", 100, req("x", 5), req("y", 5))
    one = inst("one", 100, req("z", 10))
    assert go("llumnix", [two, one], prio=HIGH) == ("one", "llumnix:headroom")


def test_llumnix_ties_random_with_seed():
    table = [inst(f"w-{k}", 100, req(f"r{k}", 10)) for k in (3, 1, 2)]
    # ties: rng.choice over ["w-1", "w-2", "w-3"]
    expect = {s: random.Random(s).choice(["w-1", "w-2", "w-3"]) for s in range(6)}
    assert expect == {0: "w-2", 1: "w-1", 2: "w-1", 3: "w-1", 4: "w-1", 5: "w-3"}
    for s, iid in expect.items():
        assert go("llumnix", table, seed=s) == (iid, "llumnix:freest")
    # input order does not matter
    assert go("llumnix", table[::-1], seed=5)[0] == "w-3"


def test_infaas_lowest_physical_usage():
    a = inst("a", 100, req("r", 50))  # (50 + 0 + 2) / 100 = 0.52
    b = inst("b", 200, req("r", 90), req("w", 20, running=False))  # (90 + 20 + 2) / 200 = 0.56
    assert go("infaas++", [b, a]) == ("a", "infaas++:lowest-usage")
    # headroom and priority are ignored: a HIGH running request changes nothing
    h = inst("h", 100, req("r", 49, high=True))  # 0.51
    assert go("infaas++", [a, h], prio=HIGH) == ("h", "infaas++:lowest-usage")
    # ties -> lowest id (natural order)
    t = [inst(i, 100, req("r", 10)) for i in ("w-10", "w-2")]
    assert go("infaas++", t) == ("w-2", "infaas++:lowest-usage")


def test_round_robin_cursor_and_membership_changes():
    t = [inst(i, 100) for i in ("w-10", "w-1", "w-2")]
    rr = RoundRobinState()
    got = [go("round-robin", t, rr=rr)[0] for _ in range(4)]
    assert got == ["w-1", "w-2", "w-10", "w-1"]
    assert rr.last_id == "w-1"
    # w-2 leaves: the next after w-1 is w-10
    assert go("round-robin", [t[0], t[1]], rr=rr) == ("w-10", "round-robin")
    # w-3 joins: the cursor (w-10) wraps to w-1, then w-2, then the newcomer w-3
    t2 = t + [inst("w-3", 100)]
    assert [go("round-robin", t2, rr=rr)[0] for _ in range(3)] == ["w-1", "w-2", "w-3"]


def test_least_queue():
    a = inst("a", 100, req("r", 1), req("w1", 1, running=False), req("w2", 1, running=False))
    b = inst("b", 100, *(req(f"r{k}", 1) for k in range(5)), req("w", 1, running=False))
    c = inst("c", 100, *(req(f"r{k}", 1) for k in range(3)), req("w", 1, running=False))
    assert go("least-queue", [a, b, c]) == ("c", "least-queue")
    d = inst("d", 100, *(req(f"r{k}", 1) for k in range(3)), req("w", 1, running=False))
    assert go("least-queue", [d, c]) == ("c", "least-queue")


@pytest.mark.parametrize("policy", DISPATCH_POLICIES)
def test_only_fresh_active_instances(policy):
    best = 1000  # the ineligible ones are far emptier
    table = [
        inst("stale", best, age=1.5),
        inst("draining-state", best, state=InstanceState.DRAINING),
        inst("draining-load", best, draining=True),
        inst("dead", best, state=InstanceState.DEAD),
        inst("excluded", best),
        inst("ok", 100, req("r", 90), req("w", 5, running=False)),
        inst("edge-age", best, age=1.0),
    ]
    picked = go(policy, table, exclude=("excluded", "edge-age"))
    assert picked[0] == "ok"
    with pytest.raises(NoInstance):
        go(policy, table, exclude=("excluded", "edge-age", "ok"))
    with pytest.raises(NoInstance):
        go(policy, [])


def test_unknown_policy():
    with pytest.raises(ValueError):
        go("fastest", [A])


def test_the_fast_dispatch_key_equals_dispatch_freeness_exactly():
    """dispatch() scores instances with a precomputed key (_dispatch_freeness_key); it must be
    the documented F_d to the last bit, for every kind of report."""
    from llumnix_zmq.scheduler.policy.dispatch import _dispatch_freeness_key

    rng = random.Random(7)
    infos = []
    for n in range(300):
        reqs = [req(f"r{k}", rng.randint(1, 40), running=rng.random() < 0.7,
                    high=rng.random() < 0.2) for k in range(rng.randint(0, 12))]
        run = sum(r.num_blocks for r in reqs if r.running)
        used = run + (rng.randint(0, 30) if n % 3 == 0 else 0)  # reserved blocks on some
        bs = rng.choice((16, 32))
        ld = InstanceLoad(rng.randint(100, 900), used, sum(r.running for r in reqs),
                          sum(not r.running for r in reqs), block_size=bs,
                          requests=tuple(reqs) if n % 5 else ())
        infos.append(InstanceInfo(f"w-{n}", "tcp://x", InstanceState.ACTIVE, ld))
    for headroom in (0, 4):
        for prompt in (1, 17, 300, 5000):
            key = _dispatch_freeness_key(headroom, prompt)
            for info in infos:
                assert key(info) == (dispatch_freeness(info, headroom, prompt),)


# Long prompts (>= cfg.long_prompt_tokens, default 512): the fewest requests that would wait for
# the prefill, among instances keeping F_d >= long_prompt_min_freeness (default 10).
X = inst("X", 400, req("x1", 100), req("x2", 100))  # F_d(32 blocks) = (400-200-32)/3 = 56
Y = inst("Y", 400, *(req(f"y{k}", 5) for k in range(4)))  # (400-20-32)/5 = 69.6
Z = inst("Z", 400, req("z1", 380))  # (400-380-32)/2 = -6: fewest requests, but no room


def test_long_prompt_goes_where_fewest_requests_wait():
    assert dispatch_freeness(X, 4, 512) == 56.0
    assert dispatch_freeness(Y, 4, 512) == pytest.approx(69.6)
    assert go("llumnix", [X, Y, Z], tokens=512) == ("X", "llumnix:long-prompt")
    assert go("llumnix-base", [X, Y, Z], tokens=512) == ("X", "llumnix-base:long-prompt")
    # one token short of the cut: plain dispatch freeness picks Y
    assert go("llumnix", [X, Y, Z], tokens=511) == ("Y", "llumnix:freest")
    # disabled
    off = PolicyConfig(headroom_blocks=4, long_prompt_tokens=0)
    assert dispatch("llumnix", [X, Y, Z], 512, NORMAL, random.Random(0), cfg=off) == \
        ("Y", "llumnix:freest")
    # HIGH keeps its headroom rule
    assert go("llumnix", [X, Y, Z], tokens=512, prio=HIGH) == ("Y", "llumnix:headroom")


def test_long_prompt_counts_waiting_requests_and_falls_back_to_freest():
    # X with a queued request: 3 would wait on X, 4 on Y -> X still; with two queued, 4 vs 4:
    # the tie goes to the larger F_d (Y)
    x1 = inst("X", 400, req("x1", 100), req("x2", 100), req("w1", 1, running=False))
    assert go("llumnix", [x1, Y], tokens=512) == ("X", "llumnix:long-prompt")
    x2 = inst("X", 400, req("x1", 100), req("x2", 100), req("w1", 1, running=False),
              req("w2", 1, running=False))
    assert go("llumnix", [x2, Y], tokens=512) == ("Y", "llumnix:long-prompt")
    # nobody keeps F_d >= 10: the largest F_d wins, whatever the request counts
    tight = PolicyConfig(headroom_blocks=4, long_prompt_min_freeness=100.0)
    assert dispatch("llumnix", [X, Y, Z], 512, NORMAL, random.Random(0), cfg=tight) == \
        ("Y", "llumnix:long-prompt")
    with pytest.raises(ValueError):
        PolicyConfig(long_prompt_tokens=-1)


def test_frontend_fallback_takes_the_long_prompt_settings():
    """The frontend's fallback dispatch (scheduler unreachable) applies the same rule, with the
    same flags: -1 the policy default, 0 off."""
    from types import SimpleNamespace

    from llumnix_zmq.config import FrontendConfig
    from llumnix_zmq.scheduler.decisions import local_dispatch

    def pick(**kw):
        return local_dispatch("llumnix", [X, Y, Z], 512, NORMAL, random.Random(0),
                              SimpleNamespace(), **kw)

    assert pick() == "X"
    assert pick(long_prompt_tokens=0) == "Y"
    assert pick(long_prompt_tokens=1024) == "Y"  # 512 tokens are not long at a 1,024 cut
    assert pick(long_prompt_min_freeness=60.0) == "Y"  # X's F_d (56) no longer qualifies
    fc = FrontendConfig()
    assert (fc.long_prompt_tokens, fc.long_prompt_min_freeness) == (-1, -1.0)
