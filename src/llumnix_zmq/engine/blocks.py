"""KV block allocator with exact accounting, shared by every engine that owns its block pool.

Invariant: ``num_free + num_used == num_blocks`` and every block id in ``[0, num_blocks)`` is in
exactly one of the free list or the used set. Allocation is deterministic (lowest ids first on a
fresh pool, then LIFO reuse), so tests can assert exact block ids.
"""

from __future__ import annotations


class NoFreeBlocks(Exception):
    """Not enough free blocks for an allocation."""


class BlockAllocator:
    def __init__(self, num_blocks: int):
        if num_blocks <= 0:
            raise ValueError("num_blocks must be positive")
        self.num_blocks = num_blocks
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() yields 0, 1, 2…
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._used)

    def can_allocate(self, n: int) -> bool:
        return 0 <= n <= len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n < 0:
            raise ValueError("negative allocation")
        if n > len(self._free):
            raise NoFreeBlocks(f"need {n} blocks, {len(self._free)} free")
        ids = [self._free.pop() for _ in range(n)]
        self._used.update(ids)
        return ids

    def free(self, ids) -> None:
        ids = list(ids)
        bad = [i for i in ids if i not in self._used]
        if bad or len(set(ids)) != len(ids):
            raise ValueError(f"freeing blocks not in use (or twice): {bad or ids}")
        for i in reversed(ids):
            self._used.discard(i)
            self._free.append(i)

    def is_used(self, block_id: int) -> bool:
        return block_id in self._used

    def check(self) -> None:
        """Raise if the invariant is broken (tests call this after every scenario)."""
        free = set(self._free)
        if len(free) != len(self._free):
            raise AssertionError("duplicate ids in free list")
        if free & self._used:
            raise AssertionError(f"blocks both free and used: {sorted(free & self._used)[:8]}")
        if free | self._used != set(range(self.num_blocks)):
            raise AssertionError("blocks lost from the pool")


def blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)
