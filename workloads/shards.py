"""Splitting one load point over N client shards and merging their results: the part the sharded
clients share, whatever runs the shards (processes of this host: `workloads/multiproc.py`; Ray
actors on a cluster's nodes: `workloads/ray_shards.py`).

Role in the data flow: the driver calls `plan_shards(requests, send_times, workers)` with the
load point's PreparedRequests and arrival; it computes every send time up front (from an
ArrivalSpec with its seed, or given) and groups the requests into chains
(`loadgen.build_chains`: a multi-turn conversation stays in one shard). Shard w gets chains w,
w+N, w+2N, ... (every N-th request for single-turn workloads) with their precomputed send times,
or its share of a closed loop's concurrency. Each shard runs `run_shard_generator` (one
LoadGenerator on a RunClock whose t=0 is the driver's) and returns `shard_result(...)`, a plain
picklable dict. `merge_shards` makes the one LoadResult the runner writes: records sorted by
intended send time and tagged with their shard, ClientHealth recomputed from the pooled
lateness / loop-lag samples, cpu_share summed, and each shard's own health kept in
`extra["shard_health"]` (a shard that could not keep up shows there even when the pool does not).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from infer_bench.backends.client.openai import PreparedRequest, RunClock

from .arrivals import send_times as arrival_send_times
from .arrivals import trace_send_times
from .loadgen import LoadGenerator, LoadResult, build_chains, health_from
from .records import RequestRecord
from .spec import ArrivalSpec

__all__ = ["plan_shards", "resolve_send_times", "make_shard_generator", "shard_result",
           "merge_shards"]


def resolve_send_times(requests: Sequence[PreparedRequest], chains: list[list[int]],
                       send_times, concurrency: int | None) -> np.ndarray | None:
    """One intended start per chain (None: closed loop)."""
    if isinstance(send_times, ArrivalSpec):
        if send_times.closed_loop:
            return None
        if send_times.kind == "trace" and all(r.send_at_s is not None for r in requests):
            t = trace_send_times(requests) / float(send_times.speedup)
            return t[[c[0] for c in chains]]
        return arrival_send_times(send_times, len(chains))
    if send_times is None:
        if not concurrency:
            raise ValueError("a sharded client needs send_times (or an ArrivalSpec) or concurrency")
        return None
    t = np.asarray(list(send_times), dtype=float)
    if len(t) == len(requests):
        return t[[c[0] for c in chains]]
    if len(t) == len(chains):
        return t
    raise ValueError(f"{len(t)} send times for {len(requests)} requests")


def plan_shards(requests: Sequence[PreparedRequest], send_times, workers: int,
                concurrency: int | None = None) -> list[dict]:
    """The shards of one load point: a list of {"requests", "arrival"}, one per shard (at most one
    per chain). `send_times`: seconds from the load point's start (one per request or per chain),
    an ArrivalSpec, or None with `concurrency` (closed loop: C split over the shards)."""
    if isinstance(send_times, ArrivalSpec) and send_times.closed_loop:
        concurrency = send_times.concurrency
    chains = build_chains(requests)
    times = resolve_send_times(requests, chains, send_times, concurrency)
    workers = min(max(1, int(workers)), max(1, len(chains)))
    return [_shard(w, workers, requests, chains, times, concurrency) for w in range(workers)]


def _shard(w: int, workers: int, requests: Sequence[PreparedRequest], chains: list[list[int]],
           times: np.ndarray | None, concurrency: int | None) -> dict:
    """Shard w's requests (chains w, w+N, ...) and its arrival: their precomputed send times, or
    its share of the closed-loop concurrency."""
    mine = list(range(w, len(chains), workers))
    reqs = [dataclasses.replace(requests[i], tokenize=None) for c in mine for i in chains[c]]
    if times is None:
        share = concurrency // workers + (1 if w < concurrency % workers else 0)
        arrival: Any = ArrivalSpec(kind="concurrency", concurrency=max(1, share))
    else:
        arrival = [float(times[c]) for c in mine]
    return {"requests": reqs, "arrival": arrival}


def make_shard_generator(kw: dict, clock: RunClock, start_at_s: float,
                         on_record: Callable[[RequestRecord], None] | None = None
                         ) -> LoadGenerator:
    """The LoadGenerator of one shard from its keyword dict (a shard of `plan_shards` plus the
    LoadGenerator options; `tokenizer_path` loads the tokenizer in the shard's process)."""
    kw = dict(kw)
    tokenize = kw.pop("tokenize", None)
    tok_path = kw.pop("tokenizer_path", None)
    if tok_path:
        from .prompt_text import load_tokenizer_for
        tokenize = load_tokenizer_for(tok_path).tokenize
    return LoadGenerator(kw.pop("url"), kw.pop("endpoint"), kw.pop("requests"), kw.pop("arrival"),
                         clock=clock, tokenize=tokenize, start_at_s=start_at_s,
                         on_record=on_record, **kw)


def shard_result(res: LoadResult, cpu_s: float, records: bool = True) -> dict:
    """One shard's LoadResult as a plain dict for the driver (records as dicts unless
    `records=False`: a shard that streamed them already)."""
    return {
        "records": [r.to_dict() for r in res.records] if records else [],
        "lateness": list(res.extra.get("send_lateness_s", [])),
        "lags": list(res.extra.get("loop_lag_s", [])),
        "timestamps": dict(res.extra.get("timestamps", {})),
        "cpu_s": float(cpu_s),
        "start_s": res.start_s, "end_s": res.end_s, "cancelled": res.cancelled,
    }


def merge_shards(results: list[dict], start_at_s: float, interrupted: bool,
                 lateness_threshold_s: float, loop_lag_threshold_s: float) -> LoadResult:
    """One LoadResult from the shards' (`shard_result` dicts, in shard order; "records" may hold
    RequestRecords or dicts): records sorted by intended send time, each tagged with its shard
    (`client_shard`, unless the shard set it), ClientHealth from the pooled samples, CPU summed;
    `extra["shard_health"]`: each shard's own ClientHealth."""
    records = []
    for w, r in enumerate(results):
        for d in r["records"]:
            rec = d if isinstance(d, RequestRecord) else RequestRecord.from_dict(d)
            if rec.client_shard is None:
                rec.client_shard = w
            records.append(rec)
    records.sort(key=lambda r: (r.intended_send_s if r.intended_send_s is not None
                                else float("inf"), r.request_id))
    lateness = [x for r in results for x in r["lateness"]]
    lags = [x for r in results for x in r["lags"]]
    end_s = max([r["end_s"] for r in results if r.get("end_s") is not None] or [start_at_s])
    wall = end_s - start_at_s
    cpu = sum(r["cpu_s"] for r in results)
    sources: Counter[str] = Counter()
    for r in results:
        sources.update(r.get("timestamps", {}))
    health = health_from(lateness, lags, cpu / wall if wall > 0 else None,
                         lateness_threshold_s, loop_lag_threshold_s)
    per_shard = [health_from(r["lateness"], r["lags"], r["cpu_s"] / wall if wall > 0 else None,
                             lateness_threshold_s, loop_lag_threshold_s).to_dict()
                 for r in results]
    return LoadResult(records=records, health=health, start_s=start_at_s, end_s=end_s,
                      cancelled=interrupted or any(r["cancelled"] for r in results),
                      extra={"workers": len(results), "interrupted": interrupted,
                             "send_lateness_s": lateness, "loop_lag_s": lags,
                             "timestamps": dict(sources),
                             "shard_cpu_s": [r["cpu_s"] for r in results],
                             "shard_health": per_shard})

