"""Server-sent events of a streamed completion: the response object and its chunks.

``SSEResponse``: an aiohttp stream whose headers wait for the first chunk and leave in the same
write (aiohttp's buffered headers, as ``web.Response`` uses). Nothing reaches the client before
there is a token (or an error) to read, so a first token costs the client one wake-up and the
frontend one send, and the frontend sends nothing while the request is on its way to a worker.

``Chunks``: the ``data: {...}\\n\\n`` events of one stream, in the OpenAI layout
(``text_completion`` or ``chat.completion.chunk``). A chunk that only carries text — nearly
all of them — is a template cut once per stream around the text, so each token costs one
``json.dumps`` of its text, not of the whole object. The bytes are the same as the general
builder's (tests/frontend/test_sse.py).
"""

from __future__ import annotations

import json

from aiohttp import web

_PROBE = "\x00"  # stands for the text while the template is cut
_PROBE_JSON = json.dumps(_PROBE)


class SSEResponse(web.StreamResponse):
    _send_headers_immediately = False


def event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class Chunks:
    """``base``: id, object, created, model. ``stream`` gives the token ids for
    ``return_token_ids`` (vLLM's layout: the prompt's ids once, then each chunk's new ids)."""

    def __init__(self, base: dict, chat: bool, return_token_ids: bool = False, stream=None):
        self.base = base
        self.chat = chat
        self.return_token_ids = return_token_ids
        self.stream = stream
        self.prompt_sent = False
        self._head = self._tail = b""
        if not return_token_ids:  # those chunks carry more than text: no template
            whole = json.dumps(self._body(_PROBE, None))
            if whole.count(_PROBE_JSON) == 1:  # (a model name with a NUL in it: no template)
                head, _, tail = whole.partition(_PROBE_JSON)
                self._head = b"data: " + head.encode()
                self._tail = tail.encode() + b"\n\n"

    def role(self) -> bytes:
        """Chat's first event: the assistant's role, no content yet."""
        return event({**self.base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                                      "content": ""},
                                                "logprobs": None, "finish_reason": None}]})

    def text(self, text: str) -> bytes:
        """A chunk of new text (not the last)."""
        if self._head:
            return self._head + json.dumps(text).encode() + self._tail
        return self.chunk(text, None)

    def chunk(self, text: str | None, finish: str | None, usage=None) -> bytes:
        body = self._body(text, finish)
        choice = body["choices"][0]
        if self.return_token_ids:
            if not self.prompt_sent:
                self.prompt_sent = True
                choice["prompt_token_ids"] = self.stream.prompt_token_ids
            choice["token_ids"] = self.stream.take_ids()
        if usage is not None:
            body["usage"] = usage
        return event(body)

    def _body(self, text: str | None, finish: str | None) -> dict:
        if self.chat:
            delta = {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**self.base, "choices": [choice]}
