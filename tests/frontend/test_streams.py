"""frontend/streams.RequestStream: ordered assembly of token deltas, detokenisation, stop
strings and finish reasons. Byte tokenizer: token id == UTF-8 byte, so texts are exact."""

from __future__ import annotations

import asyncio

from llumnix_zmq.frontend.streams import News, RequestStream, StreamEnd
from llumnix_zmq.protocol.messages import ErrorCode, FinishReason, TokenDelta
from llumnix_zmq.tokenizer import ByteTokenizer

PROMPT = [256, 72, 105]


def make(stop=(), max_tokens: int = 100) -> RequestStream:
    return RequestStream("r1", list(PROMPT), ByteTokenizer(), list(stop), max_tokens)


def delta(start: int, text: str | bytes = b"", finish=FinishReason.NONE, **kw) -> TokenDelta:
    data = text.encode() if isinstance(text, str) else text
    return TokenDelta("r1", start, tuple(data), finish, len(PROMPT), **kw)


def drain(s: RequestStream) -> bool:
    """Whether the handler was told (notifications fold into one until it looks)."""
    return s.news.take()


# --------------------------------------------------------------------------- ordering


async def test_in_order_deltas():
    s = make()
    s.on_delta(delta(0, "He"), "w1")
    assert (s.text, s.take_text()) == ("He", "He")
    s.on_delta(delta(2, "llo"), "w1")
    assert s.output_ids == list(b"Hello")
    assert s.take_text() == "llo"
    assert s.take_text() == ""
    assert s.instance_id == "w1"
    assert not s.finished
    assert drain(s) is True and drain(s) is False  # two deltas, one wake-up
    s.on_delta(delta(5, "", FinishReason.STOP), "w1")
    assert s.end == StreamEnd("stop")
    assert drain(s) is True


async def test_duplicates_are_dropped():
    s = make()
    for d in (delta(0, "ab"), delta(0, "ab"), delta(2, "c"), delta(0, "a"), delta(2, "c")):
        s.on_delta(d, "w1")
    assert s.output_ids == list(b"abc")
    assert s.text == "abc"
    assert s.take_text() == "abc"


async def test_out_of_order_parked_until_gap_fills_around_a_migration():
    s = make()
    s.on_delta(delta(0, "ab"), "src")
    s.on_delta(delta(3, "de"), "dst")  # destination's first batch overtakes the source's last
    assert s.output_ids == list(b"ab")
    assert s.take_text() == "ab"
    s.on_delta(delta(5, "f"), "dst")
    assert s.output_ids == list(b"ab")
    s.on_delta(delta(2, "c"), "src")  # the source's last token lands late
    assert s.output_ids == list(b"abcdef")
    assert s.take_text() == "cdef"
    assert s._pending == {}
    s.on_delta(delta(6, "g", FinishReason.STOP), "dst")
    assert s.text == "abcdefg"
    assert s.end == StreamEnd("stop")


async def test_request_is_attributed_to_the_newest_sender_after_a_migration():
    # Aborts and instance-death handling go to ``instance_id``: after the source's late delta
    # the request still lives on the destination.
    s = make()
    s.on_delta(delta(0, "ab"), "src")
    s.on_delta(delta(3, "de"), "dst")
    s.on_delta(delta(2, "c"), "src")
    assert s.instance_id == "dst"
    s.on_delta(delta(5, "f"), "dst")
    s.on_delta(delta(4, "ef"), "src")  # a duplicate from the old owner changes nothing
    assert s.instance_id == "dst"
    assert s.output_ids == list(b"abcdef")


async def test_overlapping_delta_keeps_only_the_new_tail():
    s = make()
    s.on_delta(delta(0, "abc"), "w1")
    s.on_delta(delta(1, "bcdef"), "w2")  # resumed worker repeats part of what we have
    assert s.output_ids == list(b"abcdef")
    assert s.text == "abcdef"


async def test_parked_delta_overlapping_the_filled_gap_is_not_lost():
    s = make()
    s.on_delta(delta(0, "abc"), "src")
    s.on_delta(delta(4, "efg"), "dst")  # parked
    s.on_delta(delta(3, "de"), "src")  # fills the gap and overlaps the parked delta
    assert s.output_ids == list(b"abcdefg")
    assert s.text == "abcdefg"
    assert s._pending == {}


async def test_two_parked_deltas_at_one_index_keep_the_longer():
    s = make()
    s.on_delta(delta(0, "a"), "w1")
    s.on_delta(delta(2, "cde"), "w2")
    s.on_delta(delta(2, "c"), "w1")
    s.on_delta(delta(1, "b"), "w1")
    assert s.output_ids == list(b"abcde")


async def test_finish_delta_that_arrives_early_is_parked_too():
    s = make()
    s.on_delta(delta(0, "a"), "w1")
    s.on_delta(delta(2, "", FinishReason.LENGTH), "w1")
    assert not s.finished
    s.on_delta(delta(1, "b"), "w1")
    assert s.end == StreamEnd("length")
    assert s.text == "ab"


async def test_deltas_after_finish_are_ignored():
    s = make()
    s.on_delta(delta(0, "ab", FinishReason.STOP), "w1")
    s.on_delta(delta(2, "cd"), "w1")
    s.on_delta(delta(2, "", FinishReason.ERROR, error="late"), "w1")
    assert s.output_ids == list(b"ab")
    assert s.end == StreamEnd("stop")


# --------------------------------------------------------------------------- stop strings


async def test_stop_string_across_delta_boundaries():
    s = make(stop=["END"])
    s.on_delta(delta(0, "abcE"), "w1")
    assert s.take_text() == "ab"  # "cE" held back: it may start "END"
    s.on_delta(delta(4, "N"), "w1")
    assert s.take_text() == "c"  # "EN" still held back
    assert not s.finished
    s.on_delta(delta(5, "Dxyz"), "w1")
    assert s.stop_hit
    assert s.text == "abc"
    assert s.end == StreamEnd("stop")
    assert s.output_ids == list(b"abcEND")  # tokens after the stop string are not taken
    assert s.take_text() == ""
    assert s.usage() == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}


async def test_held_back_prefix_is_released_when_it_is_not_a_stop():
    s = make(stop=["END"])
    s.on_delta(delta(0, "abEN"), "w1")
    assert s.take_text() == "ab"
    s.on_delta(delta(4, "Xy"), "w1")
    assert s.take_text() == "EN"  # the last len("END") - 1 characters stay held back
    s.on_delta(delta(6, "", FinishReason.STOP), "w1")
    assert s.take_text() == "Xy"  # finished: everything left goes out
    assert s.text == "abENXy"
    assert not s.stop_hit


async def test_earliest_of_several_stop_strings_cuts_the_text():
    s = make(stop=["xyz", "b", "\n\n"])
    s.on_delta(delta(0, "a\n\nbxyz"), "w1")
    assert s.text == "a"
    assert s.output_ids == list(b"a\n\n")
    assert s.end == StreamEnd("stop")


async def test_stop_string_at_the_very_start():
    s = make(stop=["END"])
    s.on_delta(delta(0, "ENDabc"), "w1")
    assert s.text == ""
    assert s.take_text() == ""
    assert s.end == StreamEnd("stop")


async def test_stop_string_spanning_three_deltas_one_byte_each():
    s = make(stop=["<|end|>"])
    taken = []
    for i, ch in enumerate("hi<|end|>more"):
        s.on_delta(delta(i, ch), "w1")
        taken.append(s.take_text())
        if s.finished:
            break
    assert "".join(taken) == "hi"
    assert s.text == "hi"
    assert s.end == StreamEnd("stop")
    assert len(s.output_ids) == len("hi<|end|>")


# --------------------------------------------------------------------------- finish reasons


async def test_max_tokens_reached_is_length():
    s = make(max_tokens=3)
    s.on_delta(delta(0, "ab"), "w1")
    assert not s.finished
    s.on_delta(delta(2, "cdef"), "w1")
    assert s.output_ids == list(b"abc")
    assert s.end == StreamEnd("length")
    assert s.take_text() == "abc"


async def test_worker_finish_reasons_are_named():
    for reason, name in [(FinishReason.STOP, "stop"), (FinishReason.LENGTH, "length"),
                         (FinishReason.ABORT, "abort")]:
        s = make()
        s.on_delta(delta(0, "x", reason), "w1")
        assert s.end == StreamEnd(name)


async def test_error_delta_maps_code_to_http_status():
    cases = [(ErrorCode.BAD_REQUEST, 400), (ErrorCode.INSTANCE_DEAD, 503),
             (ErrorCode.NO_INSTANCE, 503), (ErrorCode.BUSY, 503), (ErrorCode.TIMEOUT, 504),
             (ErrorCode.INTERNAL, 500), (0, 500), (999, 500)]
    for code, status in cases:
        s = make()
        s.on_delta(delta(0, "ab"), "w1")
        s.on_delta(delta(2, "", FinishReason.ERROR, error="engine failed",
                         error_code=int(code)), "w1")
        assert s.end == StreamEnd("error", "engine failed", status), code
        assert s.output_ids == list(b"ab")


async def test_error_delta_without_text_gets_a_default_message():
    s = make()
    s.on_delta(delta(7, "", FinishReason.ERROR, error_code=int(ErrorCode.INTERNAL)), "w1")
    assert s.end == StreamEnd("error", "request failed", 500)
    assert drain(s) is True


async def test_finish_is_idempotent():
    s = make()
    s.finish(StreamEnd("abort"))
    s.finish(StreamEnd("error", "x", 503))
    assert s.end == StreamEnd("abort")
    assert drain(s) is True


# --------------------------------------------------------------------------- UTF-8


async def test_two_byte_character_split_across_deltas():
    s = make()
    e_acute = "é".encode()
    assert len(e_acute) == 2
    s.on_delta(delta(0, b"a" + e_acute[:1]), "w1")
    assert s.text == "a"
    assert s.take_text() == "a"
    s.on_delta(delta(2, e_acute[1:]), "w1")
    assert s.text == "aé"
    assert s.take_text() == "é"


async def test_multibyte_text_one_byte_per_delta_never_emits_replacement_chars():
    text = "héllo wörld 😀 终"
    s = make()
    out = []
    for i, byte in enumerate(text.encode()):
        s.on_delta(delta(i, bytes([byte])), "w1")
        assert "\ufffd" not in s.text
        out.append(s.take_text())
    assert "".join(out) == text
    assert s.text == text
    assert len(s.output_ids) == len(text.encode())


async def test_stop_string_after_multibyte_characters():
    s = make(stop=["ö!"])
    for i, byte in enumerate("aöböcö!d".encode()):
        s.on_delta(delta(i, bytes([byte])), "w1")
        if s.finished:
            break
    assert s.text == "aöböc"
    assert s.end == StreamEnd("stop")


# --------------------------------------------------------------------------- bookkeeping


async def test_usage_and_token_timing():
    s = make()
    assert s.usage() == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}
    s.on_delta(delta(0, "ab"), "w1")
    first = s.first_token_at
    assert first is not None
    s.on_delta(delta(2, "cd"), "w1")
    s.on_delta(delta(2, "cd"), "w1")  # duplicate: no new tokens, no gap sample
    s.on_delta(delta(4, "e"), "w1")
    assert s.first_token_at == first
    assert len(s.token_gaps) == 2
    assert all(g >= 0 for g in s.token_gaps)
    assert s.usage() == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


async def test_eos_token_is_counted_but_adds_no_text():
    s = make()
    s.on_delta(TokenDelta("r1", 0, (104, 105, ByteTokenizer.EOS), FinishReason.STOP), "w1")
    assert s.text == "hi"
    assert s.output_ids == [104, 105, 257]
    assert s.usage()["completion_tokens"] == 3


async def test_moved_to_keeps_ownership_against_the_sources_late_batch():
    """After RequestMoved(dst, 3) the source's late delta (tokens 2..3) must not take the
    request back: aborts and failure handling must point at the destination."""
    from llumnix_zmq.frontend.streams import RequestStream
    from llumnix_zmq.protocol.messages import TokenDelta
    from llumnix_zmq.tokenizer import ByteTokenizer

    s = RequestStream("r", [1], ByteTokenizer(), [], 10)
    s.on_delta(TokenDelta("r", 0, (97, 98)), "src")
    assert s.moved_to("dst", 3)
    s.on_delta(TokenDelta("r", 2, (99,)), "src")  # late: the source's last token
    assert s.instance_id == "dst" and s.output_ids == [97, 98, 99]
    s.on_delta(TokenDelta("r", 3, (100,)), "dst")
    assert s.instance_id == "dst" and s.output_ids == [97, 98, 99, 100]
    assert not s.moved_to("other", 2)  # stale notice: we already have tokens past 2
    assert s.instance_id == "dst"


async def test_a_gap_left_by_a_dead_source_is_detectable_and_dropped():
    """The source died after COMMIT with its last token unsent: the destination's tokens wait
    behind a gap only the source could fill. The stream says so, and drops them for a re-run."""
    s = make()
    s.on_delta(delta(0, "ab"), "src")
    assert not s.stalled_on("src")
    s.on_delta(delta(3, "de"), "dst")  # token 2 ("c") never comes
    assert s.stalled_on("src") and not s.stalled_on("dst")
    assert s.instance_id == "dst"
    s.drop_parked()
    assert not s.stalled_on("src") and s.output_ids == list(b"ab")
    s.on_delta(delta(2, "cd"), "w3")  # the re-run from 2 tokens on another instance
    assert s.output_ids == list(b"abcd") and s.fed_by == "w3"
    s.on_delta(delta(3, "de"), "dst")  # a late copy of the dropped batch: only the new tail
    assert s.output_ids == list(b"abcde")


# --------------------------------------------------------------------------- News


async def test_news_wakes_its_waiter_and_folds_what_comes_meanwhile():
    news = News()
    news.notify()
    news.notify()
    await asyncio.wait_for(news.wait(), 1)  # pending: at once
    assert news.take() is False  # the two folded into one
    waiter = asyncio.create_task(news.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    news.notify()  # wakes the waiter, leaves nothing pending
    await asyncio.wait_for(waiter, 1)
    assert news.take() is False


async def test_a_cancelled_wait_leaves_the_next_notification_pending():
    news = News()
    waiter = asyncio.create_task(news.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    news.notify()
    assert news.take() is True
