"""OpenAI request bodies → a validated ``ParsedRequest``; errors as OpenAI-style JSON.

Accepted fields: model, prompt (string, or a list of one string / of token ids) or messages,
max_tokens (max_completion_tokens for chat), temperature, top_p, stop (string or list of up to
4), seed, stream, stream_options.include_usage, n (only 1), ignore_eos, and the extension
``priority`` ("normal" | "high"). Unknown fields are ignored, as OpenAI does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.messages import Priority, SamplingParams


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@dataclass
class ParsedRequest:
    chat: bool
    model: str
    prompt_text: str | None
    prompt_token_ids: list[int] | None
    messages: list[dict] | None
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    ignore_eos: bool
    priority: Priority
    return_token_ids: bool = False  # vLLM's extension: token ids beside the text

    def sampling(self, max_tokens: int, stop_token_ids: tuple[int, ...]) -> SamplingParams:
        return SamplingParams(max_tokens, self.temperature, self.top_p, self.seed,
                              () if self.ignore_eos else stop_token_ids, self.ignore_eos)


def _num(body: dict, name: str, default, lo: float, hi: float, integer: bool = False):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"'{name}' must be a number", name)
    if integer and not (isinstance(value, int) or float(value).is_integer()):
        raise ApiError(400, f"'{name}' must be an integer", name)
    if not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}, got {value}", name)
    return int(value) if integer else float(value)


def _bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be a boolean", name)
    return value


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "'stop' must be a non-empty string or a list of them", "stop")
    if len(stop) > 4:
        raise ApiError(400, "'stop' takes at most 4 sequences", "stop")
    return stop


def _prompt(body: dict) -> tuple[str | None, list[int] | None]:
    if "prompt" not in body:
        raise ApiError(400, "'prompt' is required", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, None
    if (isinstance(prompt, list) and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)):
        return None, list(prompt)
    raise ApiError(400, "'prompt' must be a string or a list of token ids (batches of several "
                   "prompts are not supported)", "prompt")


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool",
                                                             "developer"):
            raise ApiError(400, f"messages[{i}] needs a valid 'role'", "messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            texts = [p.get("text") for p in content if isinstance(p, dict)
                     and p.get("type") == "text" and isinstance(p.get("text"), str)]
            if len(texts) != len(content):
                raise ApiError(400, f"messages[{i}]: only text content is supported", "messages")
            content = "".join(texts)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", "messages")
        out.append({"role": "system" if m["role"] == "developer" else m["role"],
                    "content": content})
    return out


def parse_request(body, chat: bool, served_model: str, max_tokens_limit: int) -> ParsedRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required", "model")
    if model != served_model:
        raise ApiError(404, f"The model '{model}' does not exist", "model",
                       code="model_not_found")
    n = _num(body, "n", 1, 1, 128, integer=True)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", "n")
    if chat:
        messages, prompt_text, prompt_ids = _messages(body), None, None
        mt_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
            else "max_tokens"
    else:
        messages = None
        prompt_text, prompt_ids = _prompt(body)
        mt_key = "max_tokens"
    raw_mt = body.get(mt_key)
    if raw_mt is not None and (isinstance(raw_mt, bool) or not isinstance(raw_mt, int)):
        raise ApiError(400, f"'{mt_key}' must be an integer", mt_key)
    if raw_mt is not None and raw_mt <= 0:
        raise ApiError(400, f"'{mt_key}' must be at least 1, got {raw_mt}", mt_key)
    if raw_mt is not None and raw_mt > max_tokens_limit:
        raise ApiError(400, f"'{mt_key}' must be at most {max_tokens_limit}", mt_key)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    priority = body.get("priority", "normal")
    if priority not in ("normal", "high"):
        raise ApiError(400, "'priority' must be 'normal' or 'high'", "priority")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not -(1 << 63) <= seed < (1 << 63)):
        raise ApiError(400, "'seed' must be a 64-bit integer", "seed")
    return ParsedRequest(
        chat=chat,
        model=model,
        prompt_text=prompt_text,
        prompt_token_ids=prompt_ids,
        messages=messages,
        max_tokens=raw_mt,
        temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_num(body, "top_p", 1.0, 0.0, 1.0),
        stop=_stop(body),
        seed=seed,
        stream=_bool(body, "stream", False),
        include_usage=_bool(stream_options, "include_usage", False),
        ignore_eos=_bool(body, "ignore_eos", False),
        priority=Priority.HIGH if priority == "high" else Priority.NORMAL,
        return_token_ids=_bool(body, "return_token_ids", False),
    )
