"""Unit tests of backends/engine/protocol.py: OpenAI request validation and response builders."""

from __future__ import annotations

import json

import pytest

from infer_bench.backends.engine.http import protocol
from infer_bench.backends.engine.http.protocol import RequestError
from infer_bench.backends.engine.sampling import SamplingParams


class ByteTokenizer:
    """One token per UTF-8 byte; ChatML-ish template. Enough for validation tests."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", "replace")

    def apply_chat_template(self, messages, add_generation_prompt=True) -> str:
        s = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return s + ("<assistant>" if add_generation_prompt else "")


TOK = ByteTokenizer()
NAMES = ["tiny"]


def comp(body, max_model_len=64):
    return protocol.parse_completion_request(body, tokenizer=TOK, model_names=NAMES,
                                             max_model_len=max_model_len, vocab_size=256)


def chat(body, max_model_len=64):
    return protocol.parse_chat_request(body, tokenizer=TOK, model_names=NAMES,
                                       max_model_len=max_model_len, vocab_size=256)


def bad(fn, body, status=400, match=None, param=None):
    with pytest.raises(RequestError) as ei:
        fn(body)
    e = ei.value
    assert e.status == status, e
    if match:
        assert match in e.message, e.message
    if param is not None:
        assert e.param == param
    b = e.to_body()
    assert set(b["error"]) == {"message", "type", "param", "code"}
    assert b["error"]["type"] == "invalid_request_error"
    return e


def test_good_completion_maps_to_sampling_params():
    r = comp({"model": "tiny", "prompt": "hello", "max_tokens": 5, "temperature": 0.5,
              "top_p": 0.9, "top_k": 7, "seed": 3, "stop": "\n", "ignore_eos": True,
              "stream": True, "stream_options": {"include_usage": True}, "n": 1, "user": "x"})
    assert r.kind == "completion" and r.model == "tiny"
    assert r.prompt_token_ids == list(b"hello")
    assert r.stream and r.include_usage
    sp = r.sampling
    assert isinstance(sp, SamplingParams)
    assert (sp.max_tokens, sp.temperature, sp.top_p, sp.top_k, sp.seed, sp.stop, sp.ignore_eos) \
        == (5, 0.5, 0.9, 7, 3, ["\n"], True)


def test_completion_defaults_and_token_prompt():
    r = comp({"prompt": [1, 2, 3]})  # model optional: defaults to the served one
    assert r.model == "tiny" and r.prompt_token_ids == [1, 2, 3]
    assert r.sampling.max_tokens == protocol.DEFAULT_COMPLETION_MAX_TOKENS
    assert r.sampling.temperature == 1.0 and r.sampling.stop == [] and not r.stream
    assert comp({"prompt": ["hi"]}).prompt_token_ids == list(b"hi")  # one-element batch is ok
    assert comp({"prompt": [[5, 6]]}).prompt_token_ids == [5, 6]
    assert comp({"prompt": "x", "max_tokens": 16.0}).sampling.max_tokens == 16
    # default max_tokens shrinks to the room left in the context window
    assert comp({"prompt": "x" * 60}).sampling.max_tokens == 4


def test_chat_applies_template_and_text_parts():
    r = chat({"model": "tiny", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "you"}]},
    ], "max_completion_tokens": 3, "max_tokens": 9, "temperature": 0})
    assert r.prompt_text == "<system>be brief\n<user>hi you\n<assistant>"
    assert r.prompt_token_ids == list(r.prompt_text.encode())
    assert r.sampling.max_tokens == 3 and r.sampling.temperature == 0
    # chat without max_tokens: the rest of the context window
    r = chat({"messages": [{"role": "user", "content": "hi"}]})
    assert r.sampling.max_tokens == 64 - len(r.prompt_token_ids)


@pytest.mark.parametrize("body,match,param", [
    ({"prompt": 5}, "'prompt' must be a string or an array of token ids", "prompt"),
    ({}, "'prompt' is required", "prompt"),
    ({"prompt": ""}, "must not be empty", "prompt"),
    ({"prompt": ["a", "b"]}, "batched prompts not supported", "prompt"),
    ({"prompt": [1, "a"]}, "token ids must be integers", "prompt"),
    ({"prompt": [1, 999]}, "outside the vocabulary", "prompt"),
    ({"prompt": "x", "max_tokens": -1}, "'max_tokens' must be >= 1", "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, "'max_tokens' must be >= 1", "max_tokens"),
    ({"prompt": "x", "max_tokens": "5"}, "'max_tokens' must be an integer", "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, "'max_tokens' must be an integer", "max_tokens"),
    ({"prompt": "x", "max_tokens": 10**12}, "maximum context length is 64", "max_tokens"),
    ({"prompt": "x" * 64}, "maximum context length is 64", "prompt"),
    ({"prompt": "x", "temperature": -0.1}, "'temperature' must be >= 0", "temperature"),
    ({"prompt": "x", "temperature": "hot"}, "'temperature' must be a finite number", "temperature"),
    ({"prompt": "x", "top_p": 0}, "'top_p' must be in (0, 1]", "top_p"),
    ({"prompt": "x", "top_p": 1.5}, "'top_p' must be in (0, 1]", "top_p"),
    ({"prompt": "x", "top_k": -2}, "'top_k' must be -1", "top_k"),
    ({"prompt": "x", "top_k": 1.5}, "'top_k' must be an integer", "top_k"),
    ({"prompt": "x", "seed": "s"}, "'seed' must be an integer", "seed"),
    ({"prompt": "x", "seed": 2**70}, "'seed' must be <=", "seed"),
    ({"prompt": "x", "stop": 3}, "'stop' must be a string or an array", "stop"),
    ({"prompt": "x", "stop": [""]}, "must not be empty", "stop"),
    ({"prompt": "x", "stream": "yes"}, "'stream' must be a boolean", "stream"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "only allowed when 'stream'",
     "stream_options"),
    ({"prompt": "x", "stream": True, "stream_options": {"include_usage": 1}}, "must be a boolean",
     "stream_options.include_usage"),
    ({"prompt": "x", "ignore_eos": "true"}, "'ignore_eos' must be a boolean", "ignore_eos"),
    ({"prompt": "x", "n": 2}, "only n=1", "n"),
    ({"prompt": "x", "echo": True}, "'echo' is not supported", "echo"),
    ({"prompt": "x", "logprobs": 2}, "'logprobs' is not supported", "logprobs"),
    ({"prompt": "x", "presence_penalty": 0.5}, "not supported", "presence_penalty"),
    ({"prompt": "x", "model": 3}, "'model' must be a string", "model"),
])
def test_bad_completion_fields(body, match, param):
    bad(comp, body, 400, match, param)


def test_unknown_model_is_404():
    e = bad(comp, {"model": "gpt-4", "prompt": "x"}, 404, "does not exist", "model")
    assert e.code == "model_not_found"
    bad(chat, {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}, 404)


def test_neutral_fields_are_accepted():
    r = comp({"prompt": "x", "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": None,
              "echo": False, "best_of": 1, "top_k": 0, "stream": False})
    assert r.sampling.top_k == -1


@pytest.mark.parametrize("body,match", [
    ({"messages": "hi"}, "'messages' must be an array"),
    ({"messages": []}, "'messages' must not be empty"),
    ({}, "'messages' is required"),
    ({"messages": ["hi"]}, "'messages[0]' must be an object"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "must be one of"),
    ({"messages": [{"role": 1, "content": "x"}]}, "role' must be a string"),
    ({"messages": [{"role": "user"}]}, "content' is required"),
    ({"messages": [{"role": "user", "content": 5}]}, "must be a string or an array of text parts"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "only content parts of type 'text'"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -3},
     "'max_completion_tokens' must be >= 1"),
    ({"messages": [{"role": "user", "content": "x" * 80}]}, "maximum context length"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "not supported"),
])
def test_bad_chat_fields(body, match):
    bad(chat, body, 400, match)


def test_body_must_be_object_and_valid_json():
    bad(comp, [1, 2], 400, "must be a JSON object")
    with pytest.raises(RequestError, match="not valid JSON"):
        protocol.decode_json_body(b"{not json")
    with pytest.raises(RequestError, match="not valid UTF-8"):
        protocol.decode_json_body(b'{"prompt": "\xff\xfe"}')
    with pytest.raises(RequestError, match="not valid JSON"):
        protocol.decode_json_body(b'{"temperature": NaN}')
    with pytest.raises(RequestError, match="empty"):
        protocol.decode_json_body(b"  ")
    assert protocol.decode_json_body('{"a": "é"}'.encode()) == {"a": "é"}


def test_builders_and_sse():
    usage = protocol.usage_dict(3, 4)
    assert usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    ext = protocol.extension_dict("cmpl-1", {"queue_s": 0.1})
    r = protocol.completion_response("cmpl-1", "tiny", 1, "ab", "length", usage, ext)
    assert r["choices"][0]["text"] == "ab" and r["infer_bench"]["queue_s"] == 0.1
    c = protocol.chat_chunk("cmpl-1", "tiny", 1, "a", first=True, include_usage=True)
    assert c["choices"][0]["delta"] == {"role": "assistant", "content": "a"} and c["usage"] is None
    ev = protocol.sse_event(c)
    assert ev.startswith(b"data: ") and ev.endswith(b"\n\n")
    assert json.loads(ev[6:]) == c
    u = protocol.usage_chunk("chat", "cmpl-1", "tiny", 1, usage)
    assert u["choices"] == [] and u["usage"] == usage
    assert protocol.SSE_DONE == b"data: [DONE]\n\n"
    assert protocol.models_list(["tiny"])["data"][0]["id"] == "tiny"


def test_lone_surrogates_and_overflowing_numbers_are_400_not_crashes():
    for raw in (b'{"prompt": "a\\ud800b"}', b'{"prompt": "x", "stop": ["\\udfff"]}',
                b'{"\\ud83d": 1}', b'{"messages": [{"role": "user", "content": "\\udc00"}]}'):
        with pytest.raises(RequestError, match="lone surrogate") as ei:
            protocol.decode_json_body(raw)
        assert ei.value.status == 400
    # a proper surrogate pair is fine
    assert protocol.decode_json_body(b'{"prompt": "\\ud83d\\ude00"}') == {"prompt": "\U0001f600"}
    bad(comp, {"prompt": "x", "temperature": 10**400}, 400, "finite number", "temperature")
    bad(comp, {"prompt": "x", "top_p": -(10**400)}, 400, "finite number", "top_p")
    bad(comp, {"prompt": "x", "top_k": 2**63}, 400, "'top_k' must be <=", "top_k")
    with pytest.raises(RequestError, match="not valid JSON"):  # > 4300 digits
        protocol.decode_json_body(b'{"max_tokens": ' + b"9" * 5000 + b"}")


def test_sampling_values_the_sampler_cannot_take_are_normalized():
    assert comp({"prompt": "x", "temperature": 1e-300}).sampling.temperature == 0.0  # greedy
    assert comp({"prompt": "x", "temperature": 1e-5}).sampling.temperature == 1e-5
    assert comp({"prompt": "x", "top_k": 2**62}).sampling.top_k == -1   # >= vocab: no cut
    assert comp({"prompt": "x", "top_k": 255}).sampling.top_k == 255


def test_request_error_carries_headers_and_close_flag():
    e = RequestError(429, "slow down", headers={"Retry-After": "1"}, type="rate_limit_error",
                     code="rate_limit_exceeded")
    assert e.headers == {"Retry-After": "1"} and not e.close_connection
    assert e.to_body()["error"]["type"] == "rate_limit_error"
    assert RequestError(408, "late", close_connection=True).close_connection


def test_random_json_never_raises_anything_but_request_error():
    """Property: any JSON value (and any mutation of a valid body) -> EngineRequest or
    RequestError(4xx); never another exception (that would be a 500)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
              | st.floats(allow_nan=False) | st.text(max_size=20)
              | st.sampled_from(["tiny", "user", "text", "hello", "", "\n"]))
    values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=4)
                          | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                          max_leaves=12)
    fields = st.sampled_from(["model", "prompt", "messages", "max_tokens",
                              "max_completion_tokens", "temperature", "top_p", "top_k", "seed",
                              "stop", "stream", "stream_options", "n", "best_of", "echo",
                              "logprobs", "top_logprobs", "presence_penalty", "ignore_eos",
                              "min_tokens", "logit_bias", "response_format", "tools", "suffix"])
    bodies = st.one_of(values, st.fixed_dictionaries(
        {"prompt": st.just("hi"), "messages": st.just([{"role": "user", "content": "hi"}])},
        optional={}).flatmap(lambda base: st.dictionaries(fields, values, max_size=5).map(
            lambda extra: {**base, **extra})))

    @hypothesis.settings(max_examples=400, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(bodies, st.booleans())
    def check(body, as_chat):
        fn = chat if as_chat else comp
        try:
            fn(body)
        except RequestError as e:
            assert 400 <= e.status < 500, e
        raw = json.dumps(body).encode()
        try:
            protocol.decode_json_body(raw)
        except RequestError as e:
            assert e.status == 400

    check()
