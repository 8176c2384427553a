"""OpenAI wire protocol for the reference engine's HTTP server: requests in, JSON/SSE out.

Role in the data flow:

    HTTP body (bytes) --app.py--> decode_json_body() --> parse_completion_request() /
    parse_chat_request() --> EngineRequest(prompt_token_ids, SamplingParams, stream, ...)
    --app.py--> AsyncEngine.generate() --> RequestOutputs --> the builders below
    (completion_response, completion_chunk, chat_response, chat_chunk, usage_chunk,
    sse_event, SSE_DONE) --> HTTP response / SSE stream.

Nothing here touches the network or the engine: every function is pure and unit-tested on its
own (tests/test_protocol.py). Every bad input raises `RequestError(status, message, param)`,
which `error_body()` turns into OpenAI's error shape

    {"error": {"message": ..., "type": "invalid_request_error", "param": ..., "code": ...}}

Supported: `/v1/completions` (prompt: str, list[int], or a one-element list of either) and
`/v1/chat/completions` (messages with string or text-part content); fields model, max_tokens
(max_completion_tokens for chat), temperature, top_p, top_k, seed, stop, stream,
stream_options.include_usage, ignore_eos (vLLM extension), n (1 only). Fields that would change
the output and are not implemented (n > 1, best_of > 1, echo, logprobs, penalties, tools, ...)
are rejected rather than silently ignored: a benchmark must not measure something else than it
asked for. Unknown or neutral fields (user, presence_penalty=0, ...) are ignored.

Every streamed choice carries `token_ids` (the tokens of that chunk, as vLLM's
`return_token_ids` does), so a client counts tokens exactly even when a chunk's text is empty
(EOS, a partial UTF-8 character, held-back text that may start a stop string); non-streamed
choices carry all output token ids.

Server-side timing rides along in an extension field, `"infer_bench": {...}` (the engine's
`out.timing` plus the request id), on the final chunk of a stream and on non-streamed responses.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ..sampling import SamplingParams

EXTENSION_FIELD = "infer_bench"
SSE_DONE = b"data: [DONE]\n\n"

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
MAX_STOP_SEQUENCES = 16
MIN_TEMPERATURE = 1e-5  # 0 < temperature below this samples greedily (vLLM's _SAMPLING_EPS)
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")

# Completions default to 16 new tokens (OpenAI and vLLM); chat defaults to "the rest of the
# context window" (vLLM), signalled by None.
DEFAULT_COMPLETION_MAX_TOKENS = 16


# --------------------------------------------------------------------------------------------
# Errors


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status (4xx, or 5xx for our faults)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        *,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        close_connection: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ("invalid_request_error" if self.status < 500 else "server_error")
        self.headers = dict(headers or {})  # extra response headers (Retry-After, ...)
        self.close_connection = close_connection  # the server should not reuse the connection

    def to_body(self) -> dict:
        return error_body(self.message, param=self.param, code=self.code, type=self.type)

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.message!r}, param={self.param!r})"


def error_body(
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    type: str = "invalid_request_error",
) -> dict:
    """OpenAI's error JSON shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --------------------------------------------------------------------------------------------
# Parsed request


@dataclass
class EngineRequest:
    """A validated request, ready for `engine.generate(request_id, prompt_token_ids, sampling)`."""

    kind: Literal["completion", "chat"]
    model: str                       # the served model name, echoed in responses
    prompt_token_ids: list[int]
    sampling: "SamplingParams"
    stream: bool = False
    include_usage: bool = False
    prompt_text: str | None = None   # the prompt as text (chat: after the template), if known
    extra: dict = field(default_factory=dict)


def decode_json_body(raw: bytes) -> Any:
    """Bytes -> JSON value; 400 on empty bodies, invalid UTF-8, malformed JSON, NaN/Infinity."""
    if not raw or not raw.strip():
        raise RequestError(400, "request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body is not valid UTF-8 ({e.reason} at byte {e.start})")

    def _reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise RequestError(400, f"request body is not valid JSON: {e}")
    # Raw bytes were checked above, but a JSON escape can still smuggle in a lone surrogate
    # ("\ud800"), which no tokenizer or UTF-8 encoder accepts. Only \u escapes can.
    if "\\u" in text:
        _check_no_surrogates(value)
    return value


def _check_no_surrogates(value: Any) -> None:
    """400 if any string (key or value) in a decoded JSON value holds a lone surrogate."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            strings: Any = (v,)
        elif isinstance(v, dict):
            strings = v.keys()
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
            continue
        else:
            continue
        for s in strings:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as e:
                raise RequestError(400, "request body is not valid Unicode: lone surrogate "
                                        f"\\u{ord(s[e.start]):04x} in a JSON string") from None


# --------------------------------------------------------------------------------------------
# Field validators


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:  # an integer too large for a float (10**400)
        return False


def _opt_int(body: dict, name: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer() and math.isfinite(v):
        v = int(v)  # JSON clients sometimes send 16.0
    if not _is_int(v):
        raise RequestError(400, f"'{name}' must be an integer, got {_type_name(v)}", name)
    if lo is not None and v < lo:
        raise RequestError(400, f"'{name}' must be >= {lo}, got {v}", name)
    if hi is not None and v > hi:
        raise RequestError(400, f"'{name}' must be <= {hi}, got {v}", name)
    return v


def _opt_number(body: dict, name: str) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_number(v):
        raise RequestError(400, f"'{name}' must be a finite number, got {_type_name(v)}", name)
    return float(v)


def _opt_bool(body: dict, name: str) -> bool | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise RequestError(400, f"'{name}' must be a boolean, got {_type_name(v)}", name)
    return v


def _check_model(body: dict, model_names: Sequence[str]) -> str:
    served = model_names[0]
    v = body.get("model")
    if v is None:
        return served
    if not isinstance(v, str):
        raise RequestError(400, f"'model' must be a string, got {_type_name(v)}", "model")
    if v not in model_names:
        raise RequestError(
            404, f"The model '{v}' does not exist; this server serves '{served}'", "model",
            code="model_not_found")
    return v


def _parse_stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise RequestError(400, "'stop' must be a string or an array of strings", "stop")
    if len(v) > MAX_STOP_SEQUENCES:
        raise RequestError(400, f"'stop' may hold at most {MAX_STOP_SEQUENCES} sequences", "stop")
    if any(s == "" for s in v):
        raise RequestError(400, "'stop' sequences must not be empty strings", "stop")
    return list(dict.fromkeys(v))


def _parse_stream(body: dict) -> tuple[bool, bool]:
    stream = bool(_opt_bool(body, "stream"))
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise RequestError(400, f"'stream_options' must be an object, got {_type_name(opts)}",
                               "stream_options")
        if not stream:
            raise RequestError(400, "'stream_options' is only allowed when 'stream' is true",
                               "stream_options")
        iu = opts.get("include_usage")
        if iu is not None and not isinstance(iu, bool):
            raise RequestError(400, "'stream_options.include_usage' must be a boolean",
                               "stream_options.include_usage")
        include_usage = bool(iu)
    return stream, include_usage


def _reject_unsupported(body: dict, kind: str) -> None:
    n = _opt_int(body, "n")
    if n is not None and n != 1:
        raise RequestError(400, f"only n=1 is supported, got n={n}", "n")
    best_of = _opt_int(body, "best_of")
    if best_of is not None and best_of != 1:
        raise RequestError(400, "only best_of=1 is supported", "best_of")
    if body.get("echo") not in (None, False):
        raise RequestError(400, "'echo' is not supported", "echo")
    if kind == "completion":
        if body.get("logprobs") is not None:
            raise RequestError(400, "'logprobs' is not supported", "logprobs")
        if body.get("suffix") not in (None, ""):
            raise RequestError(400, "'suffix' is not supported", "suffix")
    else:
        if body.get("logprobs") not in (None, False):
            raise RequestError(400, "'logprobs' is not supported", "logprobs")
        if body.get("top_logprobs") not in (None, 0):
            raise RequestError(400, "'top_logprobs' is not supported", "top_logprobs")
        if body.get("tools"):
            raise RequestError(400, "'tools' are not supported", "tools")
    for name in ("presence_penalty", "frequency_penalty"):
        v = _opt_number(body, name)
        if v:
            raise RequestError(400, f"'{name}' is not supported (only 0)", name)
    rp = _opt_number(body, "repetition_penalty")
    if rp is not None and rp != 1.0:
        raise RequestError(400, "'repetition_penalty' is not supported (only 1)",
                           "repetition_penalty")
    if body.get("logit_bias"):
        raise RequestError(400, "'logit_bias' is not supported", "logit_bias")
    if body.get("response_format") not in (None, {"type": "text"}):
        raise RequestError(400, "'response_format' is not supported", "response_format")


# --------------------------------------------------------------------------------------------
# Requests


def _sampling_params(
    body: dict,
    *,
    max_tokens_field: str,
    max_tokens: int | None,
    default_max_tokens: int | None,
    n_prompt: int,
    max_model_len: int | None,
    vocab_size: int | None = None,
) -> "SamplingParams":
    from ..sampling import SamplingParams

    temperature = _opt_number(body, "temperature")
    if temperature is not None and temperature < 0:
        raise RequestError(400, f"'temperature' must be >= 0, got {temperature:g}", "temperature")
    if temperature is not None and temperature < MIN_TEMPERATURE:
        temperature = 0.0  # as vLLM: logits / 1e-300 overflow to inf/NaN; this close to 0 = greedy
    top_p = _opt_number(body, "top_p")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise RequestError(400, f"'top_p' must be in (0, 1], got {top_p:g}", "top_p")
    top_k = _opt_int(body, "top_k", hi=_INT64_MAX)  # the sampler builds an int64 tensor
    if top_k is not None:
        if top_k == 0:
            top_k = -1  # vLLM: 0 and -1 both mean "no top-k"
        if top_k < -1:
            raise RequestError(400, f"'top_k' must be -1 (disabled) or >= 1, got {top_k}",
                               "top_k")
        if vocab_size is not None and top_k >= vocab_size:
            top_k = -1  # keeping the whole vocabulary is no cut
    seed = _opt_int(body, "seed", lo=_INT64_MIN, hi=_INT64_MAX)
    stop = _parse_stop(body)
    ignore_eos = bool(_opt_bool(body, "ignore_eos"))
    min_tokens = _opt_int(body, "min_tokens", lo=0)
    if min_tokens and not ignore_eos:
        raise RequestError(400, "'min_tokens' is not supported; use 'ignore_eos': true",
                           "min_tokens")

    # Context window: the prompt must leave room for at least one new token, and the prompt plus
    # max_tokens must fit.
    if max_model_len is not None:
        if n_prompt >= max_model_len:
            raise RequestError(
                400,
                f"This model's maximum context length is {max_model_len} tokens. However, your "
                f"prompt has {n_prompt} tokens, which leaves no room for a completion.",
                "messages" if max_tokens_field == "max_completion_tokens" else "prompt",
                code="context_length_exceeded")
        if max_tokens is None:
            room = max_model_len - n_prompt
            max_tokens = room if default_max_tokens is None else min(default_max_tokens, room)
        elif n_prompt + max_tokens > max_model_len:
            raise RequestError(
                400,
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {n_prompt + max_tokens} tokens ({n_prompt} in the prompt, "
                f"{max_tokens} for the completion). Please reduce the prompt or "
                f"'{max_tokens_field}'.",
                max_tokens_field, code="context_length_exceeded")
    elif max_tokens is None:
        max_tokens = default_max_tokens if default_max_tokens is not None else 256

    kwargs: dict[str, Any] = dict(max_tokens=max_tokens, stop=stop, ignore_eos=ignore_eos)
    if temperature is not None:
        kwargs["temperature"] = temperature
    if top_p is not None:
        kwargs["top_p"] = top_p
    if top_k is not None:
        kwargs["top_k"] = top_k
    if seed is not None:
        kwargs["seed"] = seed
    try:
        return SamplingParams(**kwargs)
    except (ValueError, TypeError) as e:
        raise RequestError(400, f"invalid sampling parameters: {e}")


def _max_tokens(body: dict, names: Sequence[str]) -> tuple[str, int | None]:
    """The first present of `names` (chat: max_completion_tokens wins over max_tokens)."""
    for name in names:
        if body.get(name) is not None:
            return name, _opt_int(body, name, lo=1)
    return names[-1], None


def _check_token_ids(ids: list, vocab_size: int | None, param: str) -> list[int]:
    if not all(_is_int(t) for t in ids):
        raise RequestError(400, f"'{param}' token ids must be integers", param)
    if vocab_size is not None:
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise RequestError(400, f"'{param}' has token id {bad[0]} outside the vocabulary "
                                    f"[0, {vocab_size})", param)
    elif any(t < 0 for t in ids):
        raise RequestError(400, f"'{param}' token ids must be >= 0", param)
    return list(ids)


def _require_object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise RequestError(400, f"request body must be a JSON object, got {_type_name(body)}")
    return body


def parse_completion_request(
    body: Any,
    *,
    tokenizer: Any,
    model_names: Sequence[str],
    max_model_len: int | None = None,
    vocab_size: int | None = None,
) -> EngineRequest:
    """Validate a `/v1/completions` body; tokenize its prompt. Raises RequestError."""
    body = _require_object(body)
    model = _check_model(body, model_names)
    _reject_unsupported(body, "completion")
    stream, include_usage = _parse_stream(body)
    if "prompt" not in body or body["prompt"] is None:
        raise RequestError(400, "'prompt' is required", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise RequestError(400, "batched prompts not supported: send one prompt per request",
                               "prompt")
        prompt = prompt[0]
    prompt_text: str | None = None
    if isinstance(prompt, str):
        prompt_text = prompt
        ids = list(tokenizer.encode(prompt))
    elif isinstance(prompt, list):
        ids = _check_token_ids(prompt, vocab_size, "prompt")
    else:
        raise RequestError(400, "'prompt' must be a string or an array of token ids, got "
                                f"{_type_name(prompt)}", "prompt")
    if not ids:
        raise RequestError(400, "'prompt' must not be empty", "prompt")
    name, max_tokens = _max_tokens(body, ["max_tokens"])
    sampling = _sampling_params(body, max_tokens_field=name, max_tokens=max_tokens,
                                default_max_tokens=DEFAULT_COMPLETION_MAX_TOKENS,
                                n_prompt=len(ids), max_model_len=max_model_len,
                                vocab_size=vocab_size)
    return EngineRequest("completion", model, ids, sampling, stream, include_usage, prompt_text)


def _message_text(content: Any, i: int) -> str:
    param = f"messages[{i}].content"
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise RequestError(400, f"'{param}[{j}]' must be an object", param)
            if part.get("type") != "text":
                raise RequestError(400, f"'{param}[{j}]': only content parts of type 'text' are "
                                        f"supported, got {part.get('type')!r}", param)
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(400, f"'{param}[{j}].text' must be a string", param)
            parts.append(text)
        return "".join(parts)
    raise RequestError(400, f"'{param}' must be a string or an array of text parts, got "
                            f"{_type_name(content)}", param)


def parse_messages(messages: Any) -> list[dict]:
    """Validate chat messages -> [{"role": str, "content": str}] (text parts joined)."""
    if not isinstance(messages, list):
        raise RequestError(400, f"'messages' must be an array, got {_type_name(messages)}",
                           "messages")
    if not messages:
        raise RequestError(400, "'messages' must not be empty", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(400, f"'messages[{i}]' must be an object", "messages")
        role = m.get("role")
        if not isinstance(role, str):
            raise RequestError(400, f"'messages[{i}].role' must be a string", "messages")
        if role not in CHAT_ROLES:
            raise RequestError(400, f"'messages[{i}].role' must be one of {list(CHAT_ROLES)}, "
                                    f"got {role!r}", "messages")
        if "content" not in m and role != "assistant":
            raise RequestError(400, f"'messages[{i}].content' is required", "messages")
        out.append({"role": role, "content": _message_text(m.get("content"), i)})
    return out


def parse_chat_request(
    body: Any,
    *,
    tokenizer: Any,
    model_names: Sequence[str],
    max_model_len: int | None = None,
    vocab_size: int | None = None,
) -> EngineRequest:
    """Validate a `/v1/chat/completions` body; apply the chat template and tokenize."""
    body = _require_object(body)
    model = _check_model(body, model_names)
    _reject_unsupported(body, "chat")
    stream, include_usage = _parse_stream(body)
    if "messages" not in body:
        raise RequestError(400, "'messages' is required", "messages")
    messages = parse_messages(body["messages"])
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except Exception as e:  # jinja errors from templates that, e.g., insist on alternation
        raise RequestError(400, f"could not apply the chat template: {e}", "messages")
    ids = list(tokenizer.encode(text))
    if not ids:
        raise RequestError(400, "the templated prompt is empty", "messages")
    name, max_tokens = _max_tokens(body, ["max_completion_tokens", "max_tokens"])
    sampling = _sampling_params(body, max_tokens_field=name, max_tokens=max_tokens,
                                default_max_tokens=None, n_prompt=len(ids),
                                max_model_len=max_model_len, vocab_size=vocab_size)
    return EngineRequest("chat", model, ids, sampling, stream, include_usage, text)


# --------------------------------------------------------------------------------------------
# Responses


def usage_dict(num_prompt_tokens: int, num_output_tokens: int) -> dict:
    return {"prompt_tokens": int(num_prompt_tokens), "completion_tokens": int(num_output_tokens),
            "total_tokens": int(num_prompt_tokens) + int(num_output_tokens)}


def extension_dict(request_id: str, timing: dict | None, extra: dict | None = None) -> dict:
    """The `infer_bench` extension: the server's request id (+ the client's X-Request-Id as
    client_request_id, when sent) and the engine's timing (queue_s, prefill_s, decode_s, e2e_s,
    token_steps, steps, ...)."""
    ext = {"request_id": request_id}
    if extra:
        ext.update(extra)
    if timing:
        ext.update(timing)
    return ext


def completion_response(
    request_id: str, model: str, created: int, text: str, finish_reason: str | None,
    usage: dict, extension: dict | None = None, token_ids: list[int] | None = None,
) -> dict:
    choice: dict = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    if token_ids is not None:
        choice["token_ids"] = list(token_ids)
    body = {
        "id": request_id, "object": "text_completion", "created": created, "model": model,
        "choices": [choice], "usage": usage,
    }
    if extension is not None:
        body[EXTENSION_FIELD] = extension
    return body


def chat_response(
    request_id: str, model: str, created: int, text: str, finish_reason: str | None,
    usage: dict, extension: dict | None = None, token_ids: list[int] | None = None,
) -> dict:
    choice: dict = {"index": 0, "message": {"role": "assistant", "content": text},
                    "logprobs": None, "finish_reason": finish_reason}
    if token_ids is not None:
        choice["token_ids"] = list(token_ids)
    body = {
        "id": request_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [choice], "usage": usage,
    }
    if extension is not None:
        body[EXTENSION_FIELD] = extension
    return body


def completion_chunk(
    request_id: str, model: str, created: int, text: str, finish_reason: str | None = None,
    *, include_usage: bool = False, extension: dict | None = None,
    token_ids: list[int] | None = None,
) -> dict:
    choice: dict = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    if token_ids is not None:
        choice["token_ids"] = list(token_ids)
    chunk = {
        "id": request_id, "object": "text_completion", "created": created, "model": model,
        "choices": [choice],
    }
    if include_usage:
        chunk["usage"] = None
    if extension is not None:
        chunk[EXTENSION_FIELD] = extension
    return chunk


def chat_chunk(
    request_id: str, model: str, created: int, text: str, finish_reason: str | None = None,
    *, first: bool = False, include_usage: bool = False, extension: dict | None = None,
    token_ids: list[int] | None = None,
) -> dict:
    """A chat delta; the first chunk also carries role "assistant" (no separate role chunk, so
    every chunk of a stream corresponds to one engine output)."""
    delta: dict = {"role": "assistant", "content": text} if first else {"content": text}
    choice: dict = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    if token_ids is not None:
        choice["token_ids"] = list(token_ids)
    chunk = {
        "id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [choice],
    }
    if include_usage:
        chunk["usage"] = None
    if extension is not None:
        chunk[EXTENSION_FIELD] = extension
    return chunk


def usage_chunk(kind: str, request_id: str, model: str, created: int, usage: dict) -> dict:
    """The final `stream_options.include_usage` chunk: empty choices, usage filled."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": request_id, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage}


def sse_event(obj: Any) -> bytes:
    """One server-sent event: `data: {json}\\n\\n`."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def models_list(model_names: Sequence[str], created: int | None = None,
                max_model_len: int | None = None, root: str | None = None) -> dict:
    created = int(time.time()) if created is None else created
    data = []
    for name in model_names:
        entry = {"id": name, "object": "model", "created": created, "owned_by": "infer-bench"}
        if root:
            entry["root"] = root
        if max_model_len:
            entry["max_model_len"] = max_model_len
        data.append(entry)
    return {"object": "list", "data": data}
