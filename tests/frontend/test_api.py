"""frontend/api.parse_request: every validation rule (status and param) and the accepted forms."""

from __future__ import annotations

import pytest

from llumnix_zmq.frontend.api import ApiError, ParsedRequest, parse_request
from llumnix_zmq.protocol.messages import Priority, SamplingParams

MODEL = "tiny"
LIMIT = 512


def completion(**kw) -> dict:
    return {"model": MODEL, "prompt": "hello", **kw}


def chat(**kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kw}


def parse(body, is_chat: bool = False) -> ParsedRequest:
    return parse_request(body, is_chat, MODEL, LIMIT)


def error(body, is_chat: bool = False) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(body, is_chat)
    return info.value


# --------------------------------------------------------------------------- accepted forms


def test_minimal_completion_defaults():
    assert parse(completion()) == ParsedRequest(
        chat=False, model=MODEL, prompt_text="hello", prompt_token_ids=None, messages=None,
        max_tokens=None, temperature=1.0, top_p=1.0, stop=[], seed=None, stream=False,
        include_usage=False, ignore_eos=False, priority=Priority.NORMAL)


def test_full_completion():
    req = parse(completion(max_tokens=64, temperature=0, top_p=0.5, stop=["\n", "END"], seed=-7,
                           stream=True, stream_options={"include_usage": True}, ignore_eos=True,
                           priority="high", n=1, logprobs=None, user="ignored"))
    assert (req.max_tokens, req.temperature, req.top_p, req.stop, req.seed) == \
        (64, 0.0, 0.5, ["\n", "END"], -7)
    assert (req.stream, req.include_usage, req.ignore_eos, req.priority) == \
        (True, True, True, Priority.HIGH)
    assert type(req.temperature) is float


def test_prompt_as_list_of_one_string():
    req = parse(completion(prompt=["one prompt"]))
    assert (req.prompt_text, req.prompt_token_ids) == ("one prompt", None)


def test_prompt_as_token_ids():
    req = parse(completion(prompt=[256, 0, 104, 105]))
    assert (req.prompt_text, req.prompt_token_ids) == (None, [256, 0, 104, 105])


def test_empty_string_prompt_is_accepted_as_text():
    assert parse(completion(prompt="")).prompt_text == ""


def test_stop_string_becomes_a_list():
    assert parse(completion(stop="###")).stop == ["###"]
    assert parse(completion(stop=None)).stop == []
    assert parse(completion(stop=[])).stop == []
    assert parse(completion(stop=["a", "b", "c", "d"])).stop == ["a", "b", "c", "d"]


def test_chat_messages_with_content_parts_and_developer_role():
    req = parse(chat(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": ""},
        {"role": "tool", "content": "42", "tool_call_id": "x"},
    ]), is_chat=True)
    assert req.chat is True
    assert req.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
        {"role": "tool", "content": "42"},
    ]
    assert (req.prompt_text, req.prompt_token_ids) == (None, None)


def test_chat_max_completion_tokens_wins_over_max_tokens():
    assert parse(chat(max_completion_tokens=7, max_tokens=9), is_chat=True).max_tokens == 7
    assert parse(chat(max_tokens=9), is_chat=True).max_tokens == 9
    assert parse(chat(max_completion_tokens=None, max_tokens=9), is_chat=True).max_tokens == 9


def test_completion_ignores_max_completion_tokens():
    assert parse(completion(max_completion_tokens=7)).max_tokens is None


def test_max_tokens_at_the_limit():
    assert parse(completion(max_tokens=LIMIT)).max_tokens == LIMIT
    assert parse(completion(max_tokens=1)).max_tokens == 1


def test_n_as_integral_float_and_null_options():
    req = parse(completion(n=1.0, temperature=None, top_p=None, stream=None, seed=None,
                           stream_options=None, priority="normal"))
    assert (req.temperature, req.top_p, req.stream, req.priority) == (1.0, 1.0, False,
                                                                      Priority.NORMAL)


def test_falsy_stream_options_count_as_absent():
    for value in ([], {}, None, 0, ""):
        assert parse(completion(stream_options=value)).include_usage is False


def test_seed_bounds():
    assert parse(completion(seed=(1 << 63) - 1)).seed == (1 << 63) - 1
    assert parse(completion(seed=-(1 << 63))).seed == -(1 << 63)


def test_sampling_params():
    req = parse(completion(temperature=0.3, top_p=0.8, seed=5))
    assert req.sampling(32, (257,)) == SamplingParams(32, 0.3, 0.8, 5, (257,), False)
    req = parse(completion(ignore_eos=True))
    assert req.sampling(8, (257,)) == SamplingParams(8, 1.0, 1.0, None, (), True)


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    "body,is_chat,status,param",
    [
        ([], False, 400, None),
        ("text", False, 400, None),
        (None, True, 400, None),
        ({"prompt": "x"}, False, 400, "model"),
        (completion(model=""), False, 400, "model"),
        (completion(model=5), False, 400, "model"),
        (completion(model="other"), False, 404, "model"),
        (completion(n=2), False, 400, "n"),
        (completion(n=0), False, 400, "n"),
        (completion(n=1.5), False, 400, "n"),
        (completion(n="1"), False, 400, "n"),
        (completion(n=True), False, 400, "n"),
        ({"model": MODEL}, False, 400, "prompt"),
        (completion(prompt=None), False, 400, "prompt"),
        (completion(prompt=[]), False, 400, "prompt"),
        (completion(prompt=["a", "b"]), False, 400, "prompt"),
        (completion(prompt=[1, -2]), False, 400, "prompt"),
        (completion(prompt=[1, True]), False, 400, "prompt"),
        (completion(prompt=[1, 2.0]), False, 400, "prompt"),
        (completion(prompt=[[1, 2]]), False, 400, "prompt"),
        (completion(prompt={"text": "x"}), False, 400, "prompt"),
        (completion(max_tokens=0), False, 400, "max_tokens"),
        (completion(max_tokens=-1), False, 400, "max_tokens"),
        (completion(max_tokens=LIMIT + 1), False, 400, "max_tokens"),
        (completion(max_tokens=1.0), False, 400, "max_tokens"),
        (completion(max_tokens="5"), False, 400, "max_tokens"),
        (completion(max_tokens=True), False, 400, "max_tokens"),
        (chat(max_completion_tokens=0), True, 400, "max_completion_tokens"),
        (chat(max_completion_tokens=LIMIT + 1), True, 400, "max_completion_tokens"),
        (chat(max_completion_tokens="3", max_tokens=3), True, 400, "max_completion_tokens"),
        (chat(max_tokens=0), True, 400, "max_tokens"),
        (completion(stream_options="yes"), False, 400, "stream_options"),
        (completion(stream_options={"include_usage": "yes"}), False, 400, "include_usage"),
        (completion(priority="urgent"), False, 400, "priority"),
        (completion(priority=1), False, 400, "priority"),
        (completion(priority=None), False, 400, "priority"),
        (completion(seed=1.0), False, 400, "seed"),
        (completion(seed="1"), False, 400, "seed"),
        (completion(seed=False), False, 400, "seed"),
        (completion(seed=1 << 63), False, 400, "seed"),
        (completion(seed=-(1 << 63) - 1), False, 400, "seed"),
        (completion(temperature=-0.1), False, 400, "temperature"),
        (completion(temperature=2.01), False, 400, "temperature"),
        (completion(temperature="0.5"), False, 400, "temperature"),
        (completion(temperature=True), False, 400, "temperature"),
        (completion(top_p=1.5), False, 400, "top_p"),
        (completion(top_p=-1), False, 400, "top_p"),
        (completion(top_p=[1]), False, 400, "top_p"),
        (completion(stop=""), False, 400, "stop"),
        (completion(stop=["a", ""]), False, 400, "stop"),
        (completion(stop=["a", 1]), False, 400, "stop"),
        (completion(stop=5), False, 400, "stop"),
        (completion(stop=["a", "b", "c", "d", "e"]), False, 400, "stop"),
        (completion(stream="true"), False, 400, "stream"),
        (completion(stream=1), False, 400, "stream"),
        (completion(ignore_eos="no"), False, 400, "ignore_eos"),
        ({"model": MODEL}, True, 400, "messages"),
        (chat(messages=[]), True, 400, "messages"),
        (chat(messages="hi"), True, 400, "messages"),
        (chat(messages=["hi"]), True, 400, "messages"),
        (chat(messages=[{"content": "x"}]), True, 400, "messages"),
        (chat(messages=[{"role": "robot", "content": "x"}]), True, 400, "messages"),
        (chat(messages=[{"role": "user"}]), True, 400, "messages"),
        (chat(messages=[{"role": "user", "content": None}]), True, 400, "messages"),
        (chat(messages=[{"role": "user", "content": 5}]), True, 400, "messages"),
        (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
         True, 400, "messages"),
        (chat(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]),
         True, 400, "messages"),
        (chat(messages=[{"role": "user", "content": ["raw"]}]), True, 400, "messages"),
    ],
)
def test_rejections(body, is_chat, status, param):
    exc = error(body, is_chat)
    assert (exc.status, exc.param) == (status, param)
    assert exc.type == "invalid_request_error"


def test_exact_messages_and_body():
    exc = error(completion(model="gpt-4"))
    assert exc.body() == {"error": {"message": "The model 'gpt-4' does not exist",
                                    "type": "invalid_request_error", "param": "model",
                                    "code": "model_not_found"}}
    assert error(completion(max_tokens=LIMIT + 1)).message == \
        f"'max_tokens' must be at most {LIMIT}"
    assert error(completion(max_tokens=0)).message == "'max_tokens' must be at least 1, got 0"
    assert error(completion(temperature=3)).message == \
        "'temperature' must be between 0.0 and 2.0, got 3"
    assert error(completion(n=2)).message == "only n=1 is supported"
    assert error(completion(stop=list("abcde"))).message == "'stop' takes at most 4 sequences"
    assert error(chat(messages=[{"role": "user", "content": "a"}, {"role": "x"}]), True).message \
        == "messages[1] needs a valid 'role'"
    assert error([]).body()["error"]["message"] == "request body must be a JSON object"


def test_model_is_checked_before_the_prompt():
    exc = error({"model": "other"})
    assert (exc.status, exc.param) == (404, "model")


def test_n_is_checked_before_messages():
    exc = error({"model": MODEL, "n": 3}, is_chat=True)
    assert exc.param == "n"
