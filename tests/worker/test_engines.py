"""The worker builds the engine its config asks for, options passed through."""

import pytest

from llumnix_zmq.clock import FakeClock
from llumnix_zmq.config import WorkerConfig
from llumnix_zmq.worker.engines import make_engine


@pytest.mark.parametrize("on", [True, False])
def test_sim_engine_gets_priority_preemption_and_limits(on):
    eng = make_engine(WorkerConfig(engine="sim", num_blocks=64, max_batch_size=7,
                                   chunked_prefill=False, priority_preemption=on), FakeClock())
    assert (eng.config.priority_preemption, eng.num_blocks, eng.max_batch_size,
            eng.config.chunked_prefill) == (on, 64, 7, False)


@pytest.mark.parametrize("on", [True, False])
def test_torch_engine_gets_priority_preemption(on):
    pytest.importorskip("torch")
    eng = make_engine(WorkerConfig(engine="torch", model="tiny", num_blocks=32,
                                   priority_preemption=on), FakeClock())
    assert (eng.sched.priority_preemption, eng.num_blocks) == (on, 32)
