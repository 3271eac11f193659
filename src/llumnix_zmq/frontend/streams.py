"""One client request as the frontend sees it: ordered token assembly, incremental
detokenisation, stop strings, and the events the HTTP handler streams.

Token deltas may arrive from two workers around a migration (the source's last batch can land
after the destination's first), or twice after a resume: each delta carries ``start_index``,
so ``on_delta`` drops what it already has and parks what comes early until the gap fills.
The client therefore sees every token exactly once, in order.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..protocol.messages import FinishReason, TokenDelta

FINISH_NAMES = {FinishReason.STOP: "stop", FinishReason.LENGTH: "length",
                FinishReason.ABORT: "abort", FinishReason.ERROR: "error"}


class News:
    """Something happened to a stream (tokens, its end): the one waiter, its HTTP handler,
    wakes. Notifications that come while nobody waits fold into one (the handler takes all
    there is when it wakes). Made per request, so lighter than an asyncio.Queue of Nones."""

    __slots__ = ("_pending", "_waiter")

    def __init__(self):
        self._pending = False
        self._waiter: asyncio.Future | None = None

    def notify(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self._pending = True
        else:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def take(self) -> bool:
        """Consume a pending notification without waiting (False: none)."""
        pending, self._pending = self._pending, False
        return pending

    async def wait(self) -> None:
        """Until the next notification (at once if one is pending)."""
        if self.take():
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None


@dataclass
class StreamEnd:
    reason: str  # "stop" | "length" | "error" | "abort"
    error: str = ""
    status: int = 500


@dataclass
class RequestStream:
    request_id: str
    prompt_token_ids: list[int]
    tokenizer: object
    stop: list[str]
    max_tokens: int
    instance_id: str = ""
    created: float = field(default_factory=time.time)
    output_ids: list[int] = field(default_factory=list)
    text: str = ""  # detokenised output (cut at a stop string)
    emitted: int = 0  # characters of ``text`` handed to the client
    ids_emitted: int = 0  # ``output_ids`` handed to the client (return_token_ids)
    fed_by: str = ""  # the instance whose delta was applied last (fills a gap, if any)
    end: StreamEnd | None = None
    stop_hit: bool = False
    first_token_at: float | None = None
    last_token_at: float | None = None
    token_gaps: list[float] = field(default_factory=list)
    resumes: int = 0
    excluded: tuple = ()  # instances that died under this request
    request: object = None  # the GenerateRequest as last submitted (for resume)

    def __post_init__(self):
        self.news = News()
        self._pending: dict[int, TokenDelta] = {}
        self._prefix = 0  # incremental detokenisation window
        self._read = 0
        self._newest = 0  # end index of the furthest-reaching delta seen
        self._hold = max((len(s) for s in self.stop), default=1) - 1

    @property
    def finished(self) -> bool:
        return self.end is not None

    # --- input -----------------------------------------------------------------------
    def on_delta(self, delta: TokenDelta, instance_id: str) -> None:
        if self.finished:
            return
        if delta.finish_reason == FinishReason.ERROR:
            self.finish(StreamEnd("error", delta.error or "request failed",
                                  _status_for(delta.error_code)))
            return
        end = delta.start_index + len(delta.token_ids)
        if (delta.token_ids or delta.finish_reason != FinishReason.NONE) and (
                end > self._newest or (end == self._newest and not delta.token_ids)):
            # whoever sent the furthest tokens owns the request: a source's late batch after a
            # migration must not point aborts and failure handling back at the source
            self._newest = end
            self.instance_id = instance_id or self.instance_id
        if delta.start_index > len(self.output_ids):
            self._park(delta)
            return
        self.fed_by = instance_id or self.fed_by
        self._apply(delta)
        self._release()

    def stalled_on(self, instance_id: str) -> bool:
        """Tokens from another instance wait behind a gap that only ``instance_id`` (the last
        to feed us, e.g. a migration's source) could fill: if it died, they never come."""
        return bool(self._pending) and not self.finished and self.fed_by == instance_id

    def drop_parked(self) -> None:
        """Forget deltas waiting behind a gap (the request is re-run from what we have)."""
        self._pending.clear()
        self._newest = len(self.output_ids)

    def moved_to(self, instance_id: str, start_index: int) -> bool:
        """A committed migration: ``instance_id`` owns the request from output ``start_index``
        on. The source's batches up to there arriving later do not take ownership back."""
        if self.finished or self._newest > start_index:
            return False
        self._newest = start_index
        self.instance_id = instance_id
        return True

    def _park(self, delta: TokenDelta) -> None:
        old = self._pending.get(delta.start_index)
        if old is None or _reach(delta) > _reach(old):
            self._pending[delta.start_index] = delta

    def _release(self) -> None:
        """Apply parked deltas that now start at or inside what we have (they may overlap it)."""
        while self._pending and not self.finished:
            ready = [i for i in self._pending if i <= len(self.output_ids)]
            if not ready:
                return
            self._apply(self._pending.pop(min(ready)))

    def _apply(self, delta: TokenDelta) -> None:
        skip = len(self.output_ids) - delta.start_index
        new = list(delta.token_ids[skip:]) if skip < len(delta.token_ids) else []
        if new:
            now = time.monotonic()
            if self.first_token_at is None:
                self.first_token_at = now
            elif self.last_token_at is not None:
                self.token_gaps.append((now - self.last_token_at) / len(new))
            self.last_token_at = now
            for tok in new:
                self.output_ids.append(tok)
                self._detokenize()
                if self.stop_hit or len(self.output_ids) >= self.max_tokens:
                    break
        if self.stop_hit:
            self.finish(StreamEnd("stop"))
        elif delta.finish_reason != FinishReason.NONE:
            self.finish(StreamEnd(FINISH_NAMES[FinishReason(delta.finish_reason)]))
        elif len(self.output_ids) >= self.max_tokens:
            self.finish(StreamEnd("length"))
        else:
            self.news.notify()

    def _detokenize(self) -> None:
        ids = self.output_ids
        decode = self.tokenizer.decode
        prefix_text = decode(ids[self._prefix:self._read])
        new_text = decode(ids[self._prefix:])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return  # an incomplete character: wait for the next token
        old_len = len(self.text)
        self.text += new_text[len(prefix_text):]
        self._prefix, self._read = self._read, len(ids)
        if self.stop:
            start = max(0, old_len - self._hold)
            hits = [p for p in (self.text.find(s, start) for s in self.stop) if p >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.stop_hit = True

    def finish(self, end: StreamEnd) -> None:
        if self.end is None:
            self.end = end
            self.news.notify()

    # --- output ----------------------------------------------------------------------
    def take_text(self) -> str:
        """Text not yet sent; holds back a possible stop-string prefix until finished."""
        limit = len(self.text) if self.finished else max(self.emitted, len(self.text) - self._hold)
        chunk = self.text[self.emitted:limit]
        self.emitted = limit
        return chunk

    def take_ids(self) -> list[int]:
        """Output token ids not yet sent (all that arrived: ids are not held back)."""
        ids = self.output_ids[self.ids_emitted:]
        self.ids_emitted = len(self.output_ids)
        return ids

    def usage(self) -> dict:
        p, c = len(self.prompt_token_ids), len(self.output_ids)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _reach(delta: TokenDelta) -> tuple[int, bool]:
    return len(delta.token_ids), delta.finish_reason != FinishReason.NONE


def _status_for(code: int) -> int:
    from ..protocol.messages import ErrorCode

    try:
        code = ErrorCode(code)
    except ValueError:
        return 500
    return {ErrorCode.BAD_REQUEST: 400, ErrorCode.NO_INSTANCE: 503, ErrorCode.BUSY: 503,
            ErrorCode.INSTANCE_DEAD: 503, ErrorCode.TIMEOUT: 504}.get(code, 500)
