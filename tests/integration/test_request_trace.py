"""--trace-requests on a real mesh: one streamed request's stages, from two processes' files on
one clock, come back complete and in the order the request went through them."""

from __future__ import annotations

import openai
import pytest

from conftest import expected_text, start_cluster

from llumnix_zmq.common.reqtrace import STAGES, read_traces

pytestmark = pytest.mark.timeout(90)


def test_a_streamed_request_leaves_every_stage_in_order(tmp_path):
    fe, wk = tmp_path / "frontend.trace", tmp_path / "worker.trace"
    cluster = start_cluster(tmp_path, instances=1, time_scale=0.2,
                            frontend_args=["--trace-requests", str(fe)],
                            worker_args=["--trace-requests", str(wk)])
    try:
        client = openai.OpenAI(base_url=cluster.base_url + "/v1", api_key="none")
        chunks = list(client.completions.create(model="sim", prompt="trace me", max_tokens=4,
                                                stream=True))
    finally:
        cluster.stop()  # the services write their traces out as they stop
    assert "".join(c.choices[0].text for c in chunks if c.choices) == \
        expected_text("trace me", 4)
    traces = read_traces([str(fe), str(wk)])
    assert list(traces) == [chunks[0].id]
    ev = traces[chunks[0].id]
    assert sorted(ev, key=ev.get) == list(STAGES)
