"""CURVE on the mesh (a keyed cluster serves; a rogue peer is refused and logged) and frontend
death (workers abort its requests and free their blocks)."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import openai
import pytest
import zmq
import zmq.asyncio
import zmq.auth

from conftest import expected_text, start_cluster, wait_for
from llumnix_zmq.protocol.messages import ListInstances
from llumnix_zmq.transport.rpc import RpcClient
from llumnix_zmq.transport.sockets import CurveKeys, make_socket

pytestmark = pytest.mark.timeout(120)


def scheduler_table(cluster, keys: CurveKeys | None = None):
    async def ask():
        ctx = zmq.asyncio.Context()
        client = RpcClient(make_socket(ctx, zmq.DEALER, cluster.scheduler_address, bind=False,
                                       curve=keys))
        client.start()
        try:
            return await client.call(ListInstances, 2.0)
        finally:
            await client.close()
            ctx.term()

    return asyncio.run(ask())


def test_frontend_killed_workers_free_its_requests(tmp_path):
    cluster = start_cluster(tmp_path, instances=2, time_scale=1.0)
    try:
        async def start_streams():
            s = aiohttp.ClientSession()
            resps = [await s.post(cluster.base_url + "/v1/completions",
                                  json={"model": "sim", "prompt": f"fe{i}", "max_tokens": 3000,
                                        "stream": True}) for i in range(6)]
            for r in resps:
                await r.content.readline()
            return s

        loop = asyncio.new_event_loop()
        session = loop.run_until_complete(start_streams())
        used = lambda: sum(i.load.num_blocks_used for i in scheduler_table(cluster).instances)
        assert wait_for(lambda: used() > 0, 5)
        cluster.kill("frontend", signal.SIGKILL)
        t0 = time.monotonic()
        assert wait_for(lambda: used() == 0, 15), used()
        assert time.monotonic() - t0 < 15
        assert all(i.load.num_running == 0 for i in scheduler_table(cluster).instances)
        loop.run_until_complete(session.close())
        loop.close()
    finally:
        cluster.stop()


def test_curve_cluster_serves_and_refuses_rogue_peers(tmp_path):
    keys = tmp_path / "keys"
    cluster = start_cluster(tmp_path, instances=2, time_scale=0.2, curve_dir=str(keys))
    try:
        c = openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="x", max_retries=0)
        out = c.completions.create(model="sim", prompt="secure", max_tokens=8)
        assert out.choices[0].text == expected_text("secure", 8)
        # an authorized client key gets the table; a rogue key and plaintext get nothing
        spub, _ = zmq.auth.load_certificate(str(keys / "server.key"))
        fpub, fsec = zmq.auth.load_certificate(str(keys / "frontend.key_secret"))
        table = scheduler_table(cluster, CurveKeys(fpub, fsec, spub))
        assert sorted(i.instance_id for i in table.instances) == ["worker-0", "worker-1"]
        rpub, rsec = zmq.curve_keypair()
        from llumnix_zmq.transport.rpc import RpcError

        with pytest.raises(RpcError):
            scheduler_table(cluster, CurveKeys(rpub, rsec, spub))
        with pytest.raises(RpcError):
            scheduler_table(cluster)
        # a worker started with a key that is not authorized never joins
        rogue_dir = tmp_path / "rogue"
        from llumnix_zmq.security.keys import make_keys

        make_keys(str(rogue_dir), ["worker"])
        (rogue_dir / "server.key").write_bytes((keys / "server.key").read_bytes())
        (rogue_dir / "server.key_secret").write_bytes((keys / "server.key_secret").read_bytes())
        cluster.spec.curve_dir = str(rogue_dir)
        cluster.start_worker()
        time.sleep(3)
        table = scheduler_table(cluster, CurveKeys(fpub, fsec, spub))
        assert sorted(i.instance_id for i in table.instances) == ["worker-0", "worker-1"]
        log = (tmp_path / "logs" / "scheduler.log").read_text()
        assert "refused a peer (authentication failed)" in log
    finally:
        cluster.stop()
