"""common/reqtrace: per-request stage times, one file per service, read back by request id."""

from __future__ import annotations

from llumnix_zmq.common.reqtrace import RequestTracer, read_traces


def test_marks_are_read_back_per_request_first_time_wins(tmp_path):
    a, b = tmp_path / "frontend", tmp_path / "worker"
    fe, wk = RequestTracer(str(a)), RequestTracer(str(b))
    assert fe.enabled and wk.enabled
    fe.mark("accepted", "cmpl-1", 10.5)
    fe.mark("submitted", "cmpl-1", 10.75)
    wk.mark("received", "cmpl-1", 11.0)
    wk.mark("received", "cmpl-1", 99.0)  # a second time (a resume): the first one stays
    wk.mark("received", "cmpl-2", 12.25)
    fe.close()
    wk.close()
    fe.close()  # twice: harmless
    with open(b, "a") as fh:
        fh.write("first_emit cmpl-2\n")  # cut short by a killed process
        fh.write("first_emit cmpl-2 notanumber\n")
    assert read_traces([str(a), str(b)]) == {
        "cmpl-1": {"accepted": 10.5, "submitted": 10.75, "received": 11.0},
        "cmpl-2": {"received": 12.25}}


def test_off_writes_nothing(tmp_path):
    t = RequestTracer("")
    assert not t.enabled
    t.mark("accepted", "x")
    t.close()
    assert list(tmp_path.iterdir()) == []
