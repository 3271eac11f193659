"""The OpenAI-compatible HTTP server (aiohttp): completions, chat completions (SSE), models,
health, metrics, and admin endpoints.

Every failure a client can cause is answered with an OpenAI-style JSON error and a 4xx code;
a client that disconnects aborts its request on the worker (its blocks are freed there).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import random
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..common.reqtrace import RequestTracer
from ..protocol.messages import GenerateRequest, InstanceInfo
from .api import ApiError, ParsedRequest, parse_request
from .cluster import Cluster, NoInstance
from .sse import Chunks, SSEResponse, event
from .streams import RequestStream, StreamEnd

log = logging.getLogger(__name__)
MAX_JSON_DEPTH = 64
MAX_MIGRATE_REQUESTS = (1 << 31) - 1  # num_requests travels as a msgpack int


class FrontendServer:
    def __init__(self, cfg, cluster: Cluster, tokenizer, metrics, tracer=None):
        self.cfg = cfg
        self.cluster = cluster
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.model_name = cfg.served_model_name or cfg.model
        self.tracer = tracer or RequestTracer()
        self.per_client: dict[str, int] = {}
        # request ids: 128 bits from a generator seeded once from the OS (no getrandom call
        # per request; ids stay unique across frontends)
        self.ids = random.Random(int.from_bytes(os.urandom(32), "big"))
        self.in_flight = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.cfg.max_body_bytes,
                              middlewares=[self.error_middleware])
        app.add_routes([
            web.post("/v1/completions", self.completions),
            web.post("/v1/chat/completions", self.chat_completions),
            web.get("/v1/models", self.models),
            web.get("/health", self.health),
            web.get("/metrics", self.metrics_endpoint),
            web.get("/admin/instances", self.admin_instances),
            web.post("/admin/migrate", self.admin_migrate),
        ])
        return app

    # --- plumbing ----------------------------------------------------------------------
    @web.middleware
    async def error_middleware(self, request: web.Request, handler):
        endpoint = request.path
        try:
            resp = await handler(request)
        except ApiError as exc:
            resp = web.json_response(exc.body(), status=exc.status,
                                     headers={"Retry-After": "1"} if exc.status in (429, 503)
                                     else None)
        except web.HTTPRequestEntityTooLarge:
            resp = web.json_response(ApiError(413, "request body too large").body(), status=413)
        except web.HTTPException as exc:
            resp = web.json_response(ApiError(exc.status, exc.reason).body(), status=exc.status)
        self.metrics.requests.labels(endpoint, str(resp.status)).inc()
        return resp

    def check_api_key(self, request: web.Request) -> None:
        keys = self.cfg.api_keys
        if keys and not any(_bearer_ok(request, k) for k in keys):
            raise ApiError(401, "invalid or missing API key", type_="authentication_error",
                           code="invalid_api_key")

    def check_admin(self, request: web.Request) -> None:
        if not self.cfg.admin_key or not _bearer_ok(request, self.cfg.admin_key):
            raise ApiError(401, "admin endpoints need the admin key (Authorization: Bearer KEY)",
                           type_="authentication_error")

    async def read_json(self, request: web.Request):
        content = request.content
        if content.is_eof():  # the whole body is buffered already (the usual case): take it
            raw = content.read_nowait()
            if len(raw) > self.cfg.max_body_bytes:
                raise ApiError(413, "request body too large")
        else:
            raw = await request.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "request body is not valid UTF-8") from None
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise ApiError(400, "request body is not valid JSON") from None
        if _depth(body) > MAX_JSON_DEPTH:
            raise ApiError(400, f"JSON nested deeper than {MAX_JSON_DEPTH}")
        return body

    # --- OpenAI endpoints ----------------------------------------------------------------
    async def completions(self, request: web.Request):
        return await self.generate(request, chat=False)

    async def chat_completions(self, request: web.Request):
        return await self.generate(request, chat=True)

    async def models(self, request: web.Request):
        self.check_api_key(request)
        return web.json_response({"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": 0, "owned_by": "llumnix-zmq",
            "max_model_len": self.context_limit()}]})

    def tokenize(self, req: ParsedRequest) -> list[int]:
        if req.prompt_token_ids is not None:
            bad = [t for t in req.prompt_token_ids if t >= self.tokenizer.vocab_size]
            if bad:
                raise ApiError(400, f"token id {bad[0]} is outside the vocabulary", "prompt")
            return req.prompt_token_ids
        try:
            if req.chat:
                text = self.tokenizer.apply_chat_template(req.messages)
                return self.tokenizer.encode(text, add_bos=False)
            return self.tokenizer.encode(req.prompt_text)
        except UnicodeEncodeError:  # JSON can carry lone surrogates ("\ud800"): not text
            raise ApiError(400, "the prompt is not valid Unicode (lone surrogate)",
                           "messages" if req.chat else "prompt") from None

    def admit(self, client: str) -> None:
        """Admission control: bounded queues instead of unbounded ones (429 + Retry-After)."""
        cfg = self.cfg
        if self.in_flight >= cfg.max_concurrent_requests:
            raise ApiError(429, f"this frontend is at its limit of {cfg.max_concurrent_requests} "
                           "requests in flight; retry later", type_="rate_limit_error",
                           code="overloaded")
        if self.per_client.get(client, 0) >= cfg.max_requests_per_client:
            raise ApiError(429, f"at most {cfg.max_requests_per_client} requests in flight per "
                           "client", type_="rate_limit_error", code="too_many_requests")
        live = self.cluster.live_instances()
        if live and all(i.load.num_waiting >= cfg.max_queue_per_instance for i in live):
            raise ApiError(429, "the cluster is saturated (every instance has a full queue); "
                           "retry later", type_="rate_limit_error", code="saturated")

    async def generate(self, request: web.Request, chat: bool):
        accepted = time.perf_counter()
        self.check_api_key(request)
        client = request.remote or "?"
        self.admit(client)
        self.in_flight += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        try:
            return await self._generate(request, chat, accepted)
        finally:
            self.in_flight -= 1
            left = self.per_client[client] - 1
            if left:
                self.per_client[client] = left
            else:
                del self.per_client[client]

    async def _generate(self, request: web.Request, chat: bool, accepted: float):
        req = parse_request(await self.read_json(request), chat, self.model_name,
                            self.cfg.max_tokens_limit)
        prompt = self.tokenize(req)
        limit = self.context_limit()
        if not prompt:
            raise ApiError(400, "the prompt is empty", "prompt")
        if len(prompt) >= limit:
            raise ApiError(400, f"This model's maximum context length is {limit} tokens; the "
                           f"prompt has {len(prompt)} tokens", "prompt",
                           code="context_length_exceeded")
        max_tokens = min(req.max_tokens or limit - len(prompt), limit - len(prompt))
        rid = f"{'chatcmpl-' if chat else 'cmpl-'}{self.ids.getrandbits(128):032x}"
        stream = RequestStream(rid, prompt, self.tokenizer, req.stop, max_tokens)
        msg = GenerateRequest(rid, self.cluster.tokens_address, tuple(prompt),
                              req.sampling(max_tokens, tuple(self.tokenizer.eos_token_ids)),
                              req.priority, (), time.time())
        t0 = time.monotonic()
        try:
            await self.cluster.submit(stream, msg, req.priority)
        except NoInstance as exc:
            raise ApiError(503, f"no instance available: {exc}", type_="service_unavailable",
                           code="no_instance") from None
        if self.tracer.enabled:
            self.tracer.mark("accepted", rid, accepted)
            self.tracer.mark("submitted", rid)
        self.metrics.in_flight.inc()
        deadline = asyncio.get_running_loop().call_later(
            self.cfg.request_timeout_s, stream.finish, StreamEnd("error", "request timed out", 504))
        try:
            if req.stream:
                return await self.stream_response(request, req, stream, t0)
            return await self.full_response(req, stream, t0)
        finally:
            deadline.cancel()
            self.metrics.in_flight.dec()
            if not stream.finished or stream.stop_hit:
                reason = "stop string" if stream.stop_hit else "client disconnected"
                if not stream.finished:
                    self.metrics.client_aborts.inc()
                self.cluster.abort(rid, reason)
            else:
                self.cluster.forget(rid)

    def context_limit(self) -> int:
        """The smallest context any live instance registered (and the configured cap)."""
        lens = [i.max_model_len for i in self.cluster.live_instances() if i.max_model_len > 0]
        return min([self.cfg.max_model_len, *lens])

    @staticmethod
    async def wait(stream: RequestStream) -> None:
        """Until the stream has news (the request's deadline timer finishes it, see generate)."""
        await stream.news.wait()

    def observe(self, stream: RequestStream, t0: float) -> None:
        if stream.first_token_at is not None:
            self.metrics.ttft.observe(stream.first_token_at - t0)
            self.tracer.mark("first_token", stream.request_id, stream.first_token_at)
        for gap in stream.token_gaps:
            self.metrics.itl.observe(gap)
        self.metrics.e2e.observe(time.monotonic() - t0)

    async def full_response(self, req: ParsedRequest, stream: RequestStream, t0: float):
        while not stream.finished:
            await self.wait(stream)
        self.observe(stream, t0)
        end = stream.end
        if end.reason == "error":
            raise ApiError(end.status, end.error, type_="server_error" if end.status >= 500
                           else "invalid_request_error")
        text = stream.take_text()
        finish = end.reason if end.reason in ("stop", "length") else "stop"
        if req.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        body = {"id": stream.request_id, "object": obj, "created": int(stream.created),
                "model": self.model_name, "choices": [choice], "usage": stream.usage()}
        if req.return_token_ids:
            choice["token_ids"] = stream.take_ids()
            (body if req.chat else choice)["prompt_token_ids"] = stream.prompt_token_ids
        return web.json_response(body)

    async def stream_response(self, request: web.Request, req: ParsedRequest,
                              stream: RequestStream, t0: float):
        resp = SSEResponse(headers={"Content-Type": "text/event-stream",
                                    "Cache-Control": "no-cache"})
        await resp.prepare(request)  # headers are buffered: they leave with the first chunk
        obj = "chat.completion.chunk" if req.chat else "text_completion"
        base = {"id": stream.request_id, "object": obj, "created": int(stream.created),
                "model": self.model_name}
        chunks = Chunks(base, req.chat, req.return_token_ids, stream)
        chunk = chunks.chunk
        wrote = False  # a chunk with text
        role = chunks.role() if req.chat else b""  # goes out with the first content (one write)

        async def send(data: bytes) -> None:
            nonlocal role
            if role:
                data, role = role + data, b""
            await resp.write(data)

        while True:
            if not stream.finished:
                await self.wait(stream)
            text = stream.take_text()
            if stream.finished:
                break
            if text:
                await send(chunks.text(text))
                if not wrote:
                    wrote = True
                    self.tracer.mark("first_write", stream.request_id)
        self.observe(stream, t0)
        end = stream.end
        if end.reason == "error":
            if text:
                await send(chunk(text, None))
            await send(event(ApiError(end.status, end.error, type_="server_error").body()))
        else:
            finish = end.reason if end.reason in ("stop", "length") else "stop"
            await send(chunk(text, finish, stream.usage()))
            if req.include_usage:
                await send(event({**base, "choices": [], "usage": stream.usage()}))
        await send(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # --- operations ----------------------------------------------------------------------
    async def health(self, request: web.Request):
        live = len(self.cluster.live_instances())
        ok = live >= max(1, self.cfg.expect_instances)
        body = {"status": "ok" if ok else "starting", "instances": live,
                "expected": self.cfg.expect_instances, "scheduler": self.cluster.scheduler_ok}
        return web.json_response(body, status=200 if ok else 503)

    async def metrics_endpoint(self, request: web.Request):
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def admin_instances(self, request: web.Request):
        self.check_admin(request)
        out = [admin_row(info) for info in sorted(self.cluster.instances.values(),
                                                  key=lambda i: i.instance_id)]
        return web.json_response({"instances": out, "scheduler": self.cluster.scheduler_ok})

    async def admin_migrate(self, request: web.Request):
        self.check_admin(request)
        body = await self.read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("destination"), str):
            raise ApiError(400, "'destination' (an instance id) is required", "destination")
        dst = body["destination"]
        rid = body.get("request_id")
        if rid is not None:
            if not isinstance(rid, str):
                raise ApiError(400, "'request_id' must be a string", "request_id")
            src = self.locate(rid)
            ids, num = (rid,), 1
        else:
            src = body.get("source")
            num = body.get("num_requests", 1)
            if not isinstance(src, str) or isinstance(num, bool) or not isinstance(num, int) \
                    or not 1 <= num <= MAX_MIGRATE_REQUESTS:
                raise ApiError(400, "give 'request_id', or 'source' (and optional "
                               f"'num_requests' in [1, {MAX_MIGRATE_REQUESTS}])", "source")
            ids = ()
        for name in (src, dst):
            if name not in self.cluster.instances:
                raise ApiError(404, f"unknown instance '{name}'", code="instance_not_found")
        try:
            reply = await self.cluster.migrate(src, dst, ids, num)
        except Exception as exc:
            raise ApiError(503, f"migration order failed: {exc}", type_="service_unavailable") \
                from None
        status = 200 if reply.accepted else 409
        return web.json_response({"accepted": reply.accepted, "source": src, "destination": dst,
                                  "request_ids": list(reply.request_ids), "reason": reply.reason},
                                 status=status)

    def locate(self, request_id: str) -> str:
        stream = self.cluster.streams.get(request_id)
        if stream is not None and stream.instance_id:
            return stream.instance_id
        for info in self.cluster.instances.values():
            if any(r.request_id == request_id for r in info.load.requests):
                return info.instance_id
        raise ApiError(404, f"request '{request_id}' is not running", "request_id",
                       code="request_not_found")


def _bearer_ok(request: web.Request, key: str) -> bool:
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else ""
    return bool(token) and hmac.compare_digest(token.encode(), key.encode())


def _depth(obj, limit: int = MAX_JSON_DEPTH + 1) -> int:
    """Nesting depth, iteratively (a hostile body must not exhaust the stack)."""
    stack, deepest = [(obj, 1)], 0
    while stack:
        cur, d = stack.pop()
        deepest = max(deepest, d)
        if deepest >= limit:
            return deepest
        if isinstance(cur, dict):
            stack.extend((v, d + 1) for v in cur.values())
        elif isinstance(cur, list):
            stack.extend((v, d + 1) for v in cur)
    return deepest


def admin_row(info: InstanceInfo) -> dict:
    """One instance of ``GET /admin/instances``. The scheduler counts each dispatch decision as
    a request queued on its instance until that instance's next report; a dispatch ticket's
    decision (frontend/tickets.py) is for a request that has not arrived, so it has no id: it
    is shown as ``pending_dispatches``, never as a waiting request (an id "" is no request)."""
    load = info.load
    pending = sum(1 for r in load.requests if not r.running and not r.request_id)
    return {"id": info.instance_id, "address": info.address, "state": info.state.name.lower(),
            "blocks_used": load.num_blocks_used, "blocks_total": load.num_blocks_total,
            "running": load.num_running, "waiting": max(0, load.num_waiting - pending),
            "pending_dispatches": pending,
            "request_ids": [r.request_id for r in load.requests if r.running],
            "waiting_ids": [r.request_id for r in load.requests
                            if not r.running and r.request_id]}
