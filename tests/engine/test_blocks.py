import pytest

from llumnix_zmq.engine.blocks import BlockAllocator, NoFreeBlocks, blocks_for_tokens


def test_fresh_pool_allocates_lowest_ids_then_reuses_lifo():
    a = BlockAllocator(8)
    assert a.allocate(3) == [0, 1, 2]
    assert a.allocate(2) == [3, 4]
    a.free([1, 2])
    assert (a.num_free, a.num_used) == (5, 3)
    assert a.allocate(2) == [1, 2]  # freed blocks come back first, in their table order
    assert a.allocate(1) == [5]
    a.check()


def test_free_order_is_remembered():
    a = BlockAllocator(6)
    ids = a.allocate(6)
    a.free([4, 0, 2])
    assert a.allocate(3) == [4, 0, 2]
    a.free(ids)
    assert a.num_free == 6
    a.check()


def test_double_free_and_foreign_free_rejected():
    a = BlockAllocator(4)
    ids = a.allocate(2)
    a.free(ids[:1])
    with pytest.raises(ValueError):
        a.free(ids[:1])  # twice
    with pytest.raises(ValueError):
        a.free([3])  # never allocated
    with pytest.raises(ValueError):
        a.free([1, 1])  # the same id twice in one call
    assert a.is_used(1) and not a.is_used(0)
    a.check()


def test_exhaustion():
    a = BlockAllocator(3)
    assert a.can_allocate(3) and not a.can_allocate(4) and not a.can_allocate(-1)
    a.allocate(2)
    with pytest.raises(NoFreeBlocks):
        a.allocate(2)
    assert a.num_free == 1  # a failed allocation takes nothing
    assert a.allocate(0) == []
    with pytest.raises(ValueError):
        a.allocate(-1)
    with pytest.raises(ValueError):
        BlockAllocator(0)


def test_check_detects_corruption():
    a = BlockAllocator(4)
    a.allocate(2)
    a.check()
    a._free.append(0)  # 0 is also used
    with pytest.raises(AssertionError):
        a.check()
    b = BlockAllocator(4)
    b._free.pop()  # block lost
    with pytest.raises(AssertionError):
        b.check()


@pytest.mark.parametrize("tokens,blocks", [(0, 0), (1, 1), (16, 1), (17, 2), (32, 2), (33, 3)])
def test_blocks_for_tokens(tokens, blocks):
    assert blocks_for_tokens(tokens, 16) == blocks
