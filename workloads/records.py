"""One request's measurement: `RequestRecord`, one row of requests.parquet (schema_version 1).

Role in the data flow: `workloads/loadgen.py` gets a `RawResult` from `backends/openai.py` for
each request and calls `RequestRecord.from_raw(...)`, which derives ttft/tpot/e2e with the
functions of `workloads/metrics.py`; `workloads/results.py` appends records to requests.jsonl as
they complete and writes them to requests.parquet at the end; `reports/` reads them back.

Times are seconds on the run's monotonic clock (t=0 at run start). Chunk lists hold the
token-bearing chunks only. `n_output_client` / `token_count_mismatch`: the client's own output
token count and whether it disagrees with the server's usage (backends/openai.py says how it is
counted; None = no independent count). `conversation_id` / `turn`: multi-turn workloads.
`client_shard` / `client_node`: which shard of a sharded client (workloads/shards.py) sent the
request, and from which Ray node (workloads/ray_shards.py); None for a single client.
`*_from_intended_s`: latency measured from the scheduled send time. `request_id` is the
workload's id; `wire_request_id` the X-Request-Id actually sent (a UUID, backends/client/openai.py).
Reasoning / tool-call streams: `ttft_s` is to the first output token of any kind; `ttfat_s` (time
to first answer token: send -> first `content`/`text` token, `first_answer_token_s`) and
`n_output_reasoning` / `n_output_answer` / `n_output_tool` (they sum to n_output) say how much of
it was thinking or tool calls. Records of results dirs written before these columns read them
as None. Server-side timing (the reference engine's `infer_bench` field on the
final SSE chunk) fills the `server_*` columns for the keys in SERVER_KEYS; the whole object is
kept as JSON text in `server_timing_json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from . import metrics

# `infer_bench` key -> column. Engine keys are documented in docs/design.md ("server-side").
SERVER_KEYS: dict[str, str] = {
    "queue_s": "server_queue_s",
    "prefill_s": "server_prefill_s",
    "transfer_s": "server_transfer_s",
    "transfer_bytes": "server_transfer_bytes",
    "admission_s": "server_admission_s",
    "decode_s": "server_decode_s",
    "cached_tokens": "server_cached_tokens",
    "preemptions": "server_preemptions",
}
_SERVER_ALIASES = {"decode_admission_s": "admission_s", "kv_transfer_s": "transfer_s",
                   "kv_transfer_bytes": "transfer_bytes", "num_cached_tokens": "cached_tokens",
                   "num_preemptions": "preemptions"}


@dataclass
class RequestRecord:
    deployment: str
    load_point: str
    request_id: str
    wire_request_id: str | None = None
    intended_send_s: float | None = None
    send_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    end_s: float | None = None
    n_input: int | None = None
    n_output: int = 0
    n_output_source: str = "chunks"
    max_tokens: int | None = None
    chunk_times_s: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    ttft_from_intended_s: float | None = None
    e2e_from_intended_s: float | None = None
    first_answer_token_s: float | None = None
    ttfat_s: float | None = None
    n_output_reasoning: int | None = None
    n_output_answer: int | None = None
    n_output_tool: int | None = None
    n_output_client: int | None = None
    token_count_mismatch: bool | None = None
    conversation_id: str | None = None
    turn: int | None = None
    finish_reason: str | None = None
    http_status: int | None = None
    error: str | None = None
    error_type: str | None = None
    server_queue_s: float | None = None
    server_prefill_s: float | None = None
    server_transfer_s: float | None = None
    server_transfer_bytes: float | None = None
    server_admission_s: float | None = None
    server_decode_s: float | None = None
    server_cached_tokens: float | None = None
    server_preemptions: float | None = None
    server_timing_json: str | None = None
    repeat: int = 0                     # which repeat of the load point (RunSpec.repeats)
    client_shard: int | None = None     # sharded client: which shard sent it (None: one client)
    client_node: str | None = None      # Ray shards: the node it was sent from (run.json: client_shards)

    @property
    def ok(self) -> bool:
        return self.error_type is None and self.error is None

    @classmethod
    def from_raw(cls, raw, *, deployment: str = "", load_point: str = "",
                 intended_send_s: float | None = None,
                 max_tokens: int | None = None, conversation_id: str | None = None,
                 turn: int | None = None) -> "RequestRecord":
        """Build from a `backends.openai.RawResult` (any object with its attributes)."""
        times = [float(t) for t in raw.chunk_times_s]
        toks = [int(k) for k in raw.chunk_tokens]
        first = next((t for t, k in zip(times, toks) if k > 0), None)
        last = next((t for t, k in zip(reversed(times), reversed(toks)) if k > 0), None)
        n_first = next((k for k in toks if k > 0), None)
        rec = cls(
            deployment=deployment, load_point=load_point, request_id=str(raw.request_id),
            intended_send_s=intended_send_s if intended_send_s is not None else raw.send_s,
            send_s=raw.send_s, first_token_s=first, last_token_s=last, end_s=raw.end_s,
            n_input=raw.n_input, n_output=int(raw.n_output or 0),
            n_output_source=raw.n_output_source, max_tokens=max_tokens,
            chunk_times_s=times, chunk_tokens=toks,
            finish_reason=raw.finish_reason, http_status=raw.http_status,
            error=raw.error, error_type=raw.error_type,
            n_output_client=getattr(raw, "n_output_client", None),
            token_count_mismatch=getattr(raw, "token_count_mismatch", None),
            conversation_id=conversation_id, turn=turn,
            wire_request_id=getattr(raw, "wire_request_id", None),
        )
        # tokens by kind (the client's RawResult has them; anything else: all answer)
        n_rea = int(getattr(raw, "n_output_reasoning", 0) or 0)
        n_tool = int(getattr(raw, "n_output_tool", 0) or 0)
        rec.n_output_reasoning, rec.n_output_tool = n_rea, n_tool
        rec.n_output_answer = max(0, rec.n_output - n_rea - n_tool)
        first_answer = getattr(raw, "first_answer_s", None)
        rec.first_answer_token_s = (first if first_answer is None and not (n_rea or n_tool)
                                    else first_answer)
        rec.ttft_s = metrics.ttft(raw.send_s, times, toks)
        rec.ttft_from_intended_s = metrics.ttft_from_intended(rec.intended_send_s, times, toks)
        rec.tpot_s = metrics.tpot(first, last, rec.n_output, n_first)
        rec.e2e_s = metrics.e2e(raw.send_s, last)
        rec.e2e_from_intended_s = metrics.e2e(rec.intended_send_s, last)
        rec.ttfat_s = metrics.ttfat(raw.send_s, rec.first_answer_token_s)
        if raw.server_timing:
            rec.set_server_timing(raw.server_timing)
        return rec

    def set_server_timing(self, timing: dict) -> None:
        for key, value in timing.items():
            key = _SERVER_ALIASES.get(key, key)
            col = SERVER_KEYS.get(key)
            if col and isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(self, col, float(value))
        self.server_timing_json = json.dumps(timing, separators=(",", ":"), default=str)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RequestRecord":
        names = {f.name for f in fields(cls)}
        kw = {}
        for k, v in d.items():
            if k not in names:
                continue
            if isinstance(v, float) and math.isnan(v):
                v = None
            if k in ("chunk_times_s", "chunk_tokens") and v is not None:
                v = [float(x) for x in v] if k == "chunk_times_s" else [int(x) for x in v]
            kw[k] = v
        return cls(**kw)


RECORD_COLUMNS: list[str] = [f.name for f in fields(RequestRecord)]


def arrow_schema():
    """The pyarrow schema of requests.parquet (stable types even when a column is all null)."""
    import pyarrow as pa

    types = {
        "deployment": pa.string(), "load_point": pa.string(), "request_id": pa.string(),
        "n_input": pa.int64(), "n_output": pa.int64(), "n_output_source": pa.string(),
        "max_tokens": pa.int64(), "chunk_times_s": pa.list_(pa.float64()),
        "chunk_tokens": pa.list_(pa.int64()), "finish_reason": pa.string(),
        "http_status": pa.int64(), "error": pa.string(), "error_type": pa.string(),
        "server_timing_json": pa.string(), "n_output_client": pa.int64(),
        "token_count_mismatch": pa.bool_(), "conversation_id": pa.string(), "turn": pa.int64(),
        "repeat": pa.int64(), "wire_request_id": pa.string(), "n_output_reasoning": pa.int64(),
        "n_output_answer": pa.int64(), "n_output_tool": pa.int64(),
        "client_shard": pa.int64(), "client_node": pa.string(),
    }
    return pa.schema([(c, types.get(c, pa.float64())) for c in RECORD_COLUMNS])
