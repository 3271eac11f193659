"""Attention over the paged KV cache for a mixed batch, behind one function.

A batch is the flattened new tokens of several requests (``varlen``). Two groups:

| group   | rows                      | keys                                   | kernel                 |
|---------|---------------------------|----------------------------------------|------------------------|
| decode  | one new token per request | the request's blocks, gathered, padded | one batched SDPA, mask |
| prefill | a chunk of ≥ 2 tokens     | fresh K/V (chunk starts at 0) or the   | one SDPA per request,  |
|         |                           | request's gathered blocks              | causal (+ offset mask) |

Grouped-query attention without repeating K/V: the G query heads that share a KV head are laid
out as G × rows "queries" of that KV head. ``paged_attention`` is the single seam a faster
kernel (flash/paged decode) replaces; ``AttnMetadata`` is built once per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class PrefillSeg:
    row_start: int  # first row of this chunk in the flattened batch
    num_rows: int
    start_pos: int  # position of the chunk's first token (tokens before it are in the cache)
    block_ids: torch.Tensor | None  # [nb] blocks covering start_pos + num_rows; None: fresh only
    mask: torch.Tensor | None  # [G*rows, ctx] bool (True = attend), causal with offset, G-major;
    # None when start_pos == 0 (plain causal over the fresh K/V)


@dataclass
class AttnMetadata:
    slots: torch.Tensor  # [N] flat cache slot of every new token
    decode_rows: torch.Tensor | None = None  # [B] row of each decode token
    decode_blocks: torch.Tensor | None = None  # [B * max_blocks] block ids, padded with block 0
    decode_mask: torch.Tensor | None = None  # [B, 1, 1, max_blocks*bs] bool, None: no padding
    decode_ctx: int = 0  # keys to keep when B == 1 (no mask needed)
    prefills: list[PrefillSeg] = field(default_factory=list)


def build_metadata(
    chunks: list[tuple[list[int], int, int]], block_size: int, group: int, device: torch.device
) -> AttnMetadata:
    """``chunks``: per request (block table, start position, number of new tokens), in row order."""
    slots: list[int] = []
    dec_rows, dec_tables, dec_lens, prefills = [], [], [], []
    row = 0
    for table, start, n in chunks:
        for p in range(start, start + n):
            slots.append(table[p // block_size] * block_size + p % block_size)
        ctx = start + n
        nb = -(-ctx // block_size)
        if n == 1:
            dec_rows.append(row)
            dec_tables.append(table[:nb])
            dec_lens.append(ctx)
        else:
            if start == 0:
                prefills.append(PrefillSeg(row, n, 0, None, None))
            else:
                ids = torch.tensor(table[:nb], dtype=torch.long, device=device)
                q_pos = torch.arange(start, ctx, device=device)[:, None]
                mask = (torch.arange(ctx, device=device)[None, :] <= q_pos).repeat(group, 1)
                prefills.append(PrefillSeg(row, n, start, ids, mask))
        row += n
    meta = AttnMetadata(slots=torch.tensor(slots, dtype=torch.long, device=device), prefills=prefills)
    if dec_rows:
        width = max(len(t) for t in dec_tables)
        padded = [t + [0] * (width - len(t)) for t in dec_tables]
        meta.decode_rows = torch.tensor(dec_rows, dtype=torch.long, device=device)
        meta.decode_blocks = torch.tensor(padded, dtype=torch.long, device=device).flatten()
        meta.decode_ctx = max(dec_lens)
        if len(dec_rows) > 1 and min(dec_lens) != width * block_size:
            lens = torch.tensor(dec_lens, device=device)
            keys = torch.arange(width * block_size, device=device)
            meta.decode_mask = (keys[None, :] < lens[:, None])[:, None, None, :]
    return meta


def paged_attention(
    q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, kv_layer: torch.Tensor,
    meta: AttnMetadata, scale: float,
) -> torch.Tensor:
    """q [N, H, D], k_new/v_new [N, KVH, D] (already written into ``kv_layer``
    [num_blocks, bs, 2, KVH, D]) → attention output [N, H*D]."""
    n, heads, d = q.shape
    kvh = k_new.shape[1]
    g = heads // kvh
    if meta.decode_rows is not None and not meta.prefills:  # a pure decode step: rows 0..N-1
        return _decode(q, kv_layer, meta, scale, kvh, g)
    out = q.new_empty(n, heads * d)
    if meta.decode_rows is not None:
        rows = meta.decode_rows
        out.index_copy_(0, rows, _decode(q.index_select(0, rows), kv_layer, meta, scale, kvh, g))
    for seg in meta.prefills:
        rows = slice(seg.row_start, seg.row_start + seg.num_rows)
        out[rows] = _prefill(q[rows], k_new[rows], v_new[rows], kv_layer, seg, scale, kvh, g)
    return out


def _gather(kv_layer: torch.Tensor, block_ids: torch.Tensor) -> torch.Tensor:
    """[n * bs, 2, KVH, D] copy of blocks ``block_ids`` of one layer, token after token.
    index_select along the block axis copies each block's rows whole (memcpy); advanced
    indexing, or index_select along another axis of the strided view, is 3-6x slower on CPU."""
    kv = kv_layer.index_select(0, block_ids)
    return kv.view(-1, *kv.shape[2:])


def _decode(q, kv_layer, meta: AttnMetadata, scale, kvh, g):
    b, _, d = q.shape
    kv = _gather(kv_layer, meta.decode_blocks).view(b, -1, 2, kvh, d)  # [B, T, 2, KVH, D]
    if b == 1:
        kv = kv[:, : meta.decode_ctx]
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [B, KVH, T, D] views
    qg = q.view(b, kvh, g, d)  # the G heads of a KV head act as G queries
    o = F.scaled_dot_product_attention(qg, k, v, attn_mask=meta.decode_mask, scale=scale)
    return o.reshape(b, kvh * g * d)


def _prefill(q, k, v, kv_layer, seg: PrefillSeg, scale, kvh, g):
    n, heads, d = q.shape
    if seg.block_ids is None:  # the whole context is this chunk: plain causal attention
        o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                           is_causal=True, scale=scale, enable_gqa=g > 1)
        return o.transpose(0, 1).reshape(n, heads * d)
    qg = q.view(n, kvh, g, d).permute(1, 2, 0, 3).reshape(kvh, g * n, d)  # [KVH, G*n, D]
    kv = _gather(kv_layer, seg.block_ids)[: seg.start_pos + n]  # [T, 2, KVH, D]
    kk, vv = kv[:, 0].transpose(0, 1), kv[:, 1].transpose(0, 1)
    o = F.scaled_dot_product_attention(qg, kk, vv, attn_mask=seg.mask, scale=scale)
    return o.view(kvh, g, n, d).permute(2, 0, 1, 3).reshape(n, kvh * g * d)
