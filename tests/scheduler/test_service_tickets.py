"""SchedulerService.on_dispatch and dispatch tickets: a ticket (a query for request id "") is
named in the reply and counted as queued on its instance; a later query that releases it
unused takes that count back before deciding (so unused tickets do not pile up phantom
requests while a report is late)."""

from __future__ import annotations

import zmq.asyncio

from llumnix_zmq.config import SchedulerConfig
from llumnix_zmq.protocol.messages import (
    PROTOCOL_VERSION,
    DispatchQuery,
    DispatchReply,
    InstanceLoad,
    RegisterWorker,
    RequestLoad,
)
from llumnix_zmq.scheduler.service import SchedulerService


def test_tickets_are_named_counted_and_released(tmp_path):
    ctx = zmq.asyncio.Context()
    svc = SchedulerService(SchedulerConfig(bind=f"ipc://{tmp_path}/s.sock"), ctx)
    try:
        for iid in ("w1", "w2"):
            svc.registry.register(RegisterWorker(PROTOCOL_VERSION, iid, f"tcp://{iid}:1", "sim",
                                                 "m", 16, 48, 768, 8, 1), b"x", now=0.0)
        # w1 runs a 26-block request; w2 is empty
        svc.registry.report("w1", InstanceLoad(48, 26, 1, 0, 8, 16, (RequestLoad("b", 26),)),
                            now=svc.clock.now())
        svc.registry.report("w2", InstanceLoad(48, 0, 0, 0, 8, 16), now=svc.clock.now())

        def waiting(iid):
            return [q.request_id for q in svc.registry.get(iid).load.requests if not q.running]

        first = svc.on_dispatch(b"fe", DispatchQuery(1, "", 401), [])
        assert isinstance(first, DispatchReply)
        assert (first.instance_id, first.ticket_id) == ("w2", 1)
        assert waiting("w2") == [""]
        # the ticket expires unused; without a release the refresh sees the phantom on w2
        # (F_d -2 there, as on w1) and could pick w1, behind the running request
        second = svc.on_dispatch(b"fe", DispatchQuery(2, "", 401, release_ticket=1), [])
        assert (second.instance_id, second.ticket_id) == ("w2", 2)
        assert waiting("w2") == [""]  # one phantom: the live ticket's, not two
        # a real request is not a ticket
        real = svc.on_dispatch(b"fe", DispatchQuery(3, "cmpl-a", 401), [])
        assert real.ticket_id == 0
    finally:
        svc.sock.close(linger=0)
        ctx.term()
