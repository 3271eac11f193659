"""The NCCL data plane: descriptor frames on any machine; a real GPU-to-GPU migration where two
CUDA devices, cupy and NCCL are present (marked ``gpu``, skipped otherwise)."""

from __future__ import annotations

import numpy as np
import pytest

from llumnix_zmq.worker.migration import nccl
from llumnix_zmq.worker.migration.coordinator import MigrationConfig


def test_descriptor_round_trip_and_ordinary_frames():
    frame = nccl.describe((30, 2, 5, 16, 3, 64), "bfloat16", b"u" * 128)
    assert frame.startswith(nccl.MARKER)
    assert nccl.parse(memoryview(frame)) == {"shape": [30, 2, 5, 16, 3, 64], "dtype": "bfloat16",
                                             "uid": b"u" * 128}
    assert nccl.parse(np.arange(64, dtype=np.int32).tobytes()) is None
    with pytest.raises(ValueError):
        nccl.describe((1,), "int64")
    with pytest.raises(ValueError):
        nccl.parse(nccl.MARKER + b"\x81\xa5shape\x91\xff")


def test_nccl_is_opt_in_and_guarded():
    assert MigrationConfig().data_plane == "zmq"
    with pytest.raises(ValueError):
        MigrationConfig(data_plane="rdma")
    assert isinstance(nccl.nccl_available(), bool)  # never raises without a GPU


def _two_gpus() -> bool:
    try:
        import torch

        return torch.cuda.device_count() >= 2 and nccl.nccl_available()
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _two_gpus(), reason="needs two CUDA devices, cupy and NCCL")
async def test_gpu_to_gpu_migration_over_nccl():
    import torch

    from llumnix_zmq.engine.base import EngineRequest
    from llumnix_zmq.engine.torch import make_torch_engine
    from llumnix_zmq.protocol.messages import MigrateCommand, SamplingParams
    from llumnix_zmq.worker.migration import SrcState
    from llumnix_zmq.worker.migration.testing import Mesh

    prompt = [256] + list(b"GPU to GPU over NCCL, block by block")
    sp = SamplingParams(max_tokens=40, ignore_eos=True)
    ref_engine = make_torch_engine("tiny", device="cuda:0", num_blocks=64, block_size=4)
    ref_engine.add_request(EngineRequest("r", prompt, sp))
    ref = []
    while ref_engine.has_work():
        for d in ref_engine.step().deltas:
            ref.extend(d.token_ids)
    mesh = Mesh(data_plane="nccl", part_bytes=1 << 20)
    try:
        a = mesh.node("A", engine=make_torch_engine("tiny", device="cuda:0", num_blocks=64,
                                                    block_size=4))
        b = mesh.node("B", engine=make_torch_engine("tiny", device="cuda:1", num_blocks=64,
                                                    block_size=4))
        await a.add("r", prompt, sp)
        await mesh.run(until=lambda: len(mesh.stream("r")) >= 10)
        assert (await a.migration.start_command(MigrateCommand(1, "A", "B", "B", 1, ("r",)))).accepted
        await mesh.run()
        assert a.migration.history[-1].fsm.state is SrcState.DONE
        assert mesh.stream("r") == ref
        torch.cuda.synchronize()
    finally:
        await mesh.close()
