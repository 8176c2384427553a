"""Metric definitions: the single place they live (pure functions, numpy; used everywhere).

Role in the data flow: `workloads/records.py` calls the per-request functions to fill the derived
columns of a `RequestRecord`; `workloads/results.py` (summary.csv/json) and `reports/` call
`summarize` and `goodput` on the records of one deployment x load point.

Definitions (shared/DESIGN.md, "Metric definitions"); chunks are the token-bearing chunks only:
- TTFT = first chunk carrying >= 1 output token - send time. `ttft_from_intended` uses the
  intended (scheduled) send time instead, so client lateness shows up as latency.
- ITL per token: for every chunk after the first, the gap since the previous chunk spread evenly
  over the k tokens it carries (k samples of gap/k). Extra tokens in the FIRST chunk give no ITL
  samples (they arrived with the first token; TPOT accounts for them through n_first).
  Per-chunk gaps (`chunk_gaps`) are kept apart.
- TPOT = (t_last - t_first) / (n_output - n_first); undefined (None) when n_output <= n_first
  (every token came in the first chunk, or n_output <= 1).
- E2E = last token - send time.
- TTFAT (time to first answer token) = first answer token - send time, for streams whose first
  tokens are reasoning or tool calls (TTFT counts any kind; records.py). The summary has
  `ttfat_{mean,p50,...}_s` (successful requests with an answer token) and the per-kind token
  totals `n_reasoning_tokens` / `n_tool_tokens` only when some request of the load point had
  reasoning or tool-call tokens.
- Failed requests are kept and counted, and they are SLO misses.
- Token accounting: `n_token_mismatch` counts requests whose server usage disagrees with the
  client's own count (`token_count_mismatch`), out of `n_token_checked` that had both.

SLO attainment (joint, DistServe) = share of ALL requests (failed ones count as misses) with
TTFT <= S_ttft AND TPOT <= S_tpot, TTFT counted from the INTENDED send time (no coordinated
omission: a client that fell behind its schedule cannot hide the wait; for closed loops the
intended time is the actual one). `slo_attainment_from_send` counts from the actual send time, for
comparison; the report shows both where they differ. Choice: a successful request whose TPOT is undefined passes the
TPOT test (it has no decode phase to judge: n_output <= 1, or all its tokens arrived with the
first one, so its TTFT already bounds the whole output). A request with no token at all has no
TTFT and misses. An SLO bound of None is not tested.
Per-metric P90 test: `slo_ttft_p90_ok` is True when >= 90% of all requests meet the TTFT bound
(equivalently: the P90 TTFT, failures counted as infinitely late, is within the bound); same for
TPOT.

Throughput over the measured window [start, end] (default: first send to last token or end of any
request): output tokens that arrived inside the window / window length (for a request whose usage
reports more tokens than its chunks carry, each chunk's count is scaled so the request's total is
n_output), and successful requests whose last token arrived inside the window / window length.
Percentiles use numpy's default (linear interpolation); ITL percentiles pool the per-token samples
of all successful requests; the other latencies take one value per successful request.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


# ---------------------------------------------------------------------------- per request

def finite_or_none(v: Any) -> float | None:
    """`v` as a float when it is a finite number (a NaN from pandas, None, text: None)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def token_chunks(chunk_times: Sequence[float], chunk_tokens: Sequence[int]) -> list[tuple[float, int]]:
    """(time, tokens) of the chunks that carry >= 1 output token, in order."""
    return [(float(t), int(k)) for t, k in zip(chunk_times, chunk_tokens) if int(k) > 0]


def ttft(send_s: float | None, chunk_times: Sequence[float],
         chunk_tokens: Sequence[int] | None = None) -> float | None:
    """Send -> first chunk carrying >= 1 output token; None when no token arrived."""
    if send_s is None:
        return None
    if chunk_tokens is None:
        return float(chunk_times[0]) - send_s if len(chunk_times) else None
    for t, k in zip(chunk_times, chunk_tokens):
        if int(k) > 0:
            return float(t) - send_s
    return None


def ttft_from_intended(intended_send_s: float | None, chunk_times: Sequence[float],
                       chunk_tokens: Sequence[int] | None = None) -> float | None:
    """Like `ttft`, measured from the time the request was scheduled to be sent."""
    return ttft(intended_send_s, chunk_times, chunk_tokens)


def chunk_gaps(chunk_times: Sequence[float]) -> list[float]:
    """Gaps between consecutive (token-bearing) chunks."""
    t = np.asarray(chunk_times, dtype=float)
    return np.diff(t).tolist() if t.size > 1 else []


def itl_per_token(chunk_times: Sequence[float], chunk_tokens: Sequence[int]) -> list[float]:
    """For each chunk after the first: k samples of gap/k (k = tokens in that chunk)."""
    ch = token_chunks(chunk_times, chunk_tokens)
    out: list[float] = []
    for (t0, _), (t1, k) in zip(ch, ch[1:]):
        out.extend([(t1 - t0) / k] * k)
    return out


def tpot(first_token_s: float | None, last_token_s: float | None, n_output: int | None,
         n_first: int | None = 1) -> float | None:
    """(t_last - t_first) / (n_output - n_first); None when undefined."""
    if first_token_s is None or last_token_s is None or n_output is None:
        return None
    n_first = 1 if n_first is None else n_first
    if n_output - n_first <= 0:
        return None
    return (last_token_s - first_token_s) / (n_output - n_first)


def ttfat(send_s: float | None, first_answer_token_s: float | None) -> float | None:
    """Send -> first answer token (reasoning and tool-call tokens not counted); None without one."""
    if send_s is None or first_answer_token_s is None:
        return None
    return first_answer_token_s - send_s


def e2e(send_s: float | None, last_token_s: float | None) -> float | None:
    """Send -> last token."""
    if send_s is None or last_token_s is None:
        return None
    return last_token_s - send_s


# ---------------------------------------------------------------------------- per load point

def _get(r: Any, name: str, default=None):
    if isinstance(r, Mapping):
        v = r.get(name, default)
    else:
        v = getattr(r, name, default)
    if v is None:
        return default
    if isinstance(v, float) and math.isnan(v):
        return default
    return v


def _rows(records) -> list:
    try:
        import pandas as pd
        if isinstance(records, pd.DataFrame):
            return records.to_dict("records")
    except ImportError:  # pragma: no cover
        pass
    return list(records)


def is_failed(r) -> bool:
    return _get(r, "error_type") is not None or _get(r, "error") is not None


def _stats(prefix: str, values: Iterable[float]) -> dict[str, float | None]:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    a = a[~np.isnan(a)] if a.size else a
    out: dict[str, float | None] = {}
    out[f"{prefix}_mean_s"] = float(a.mean()) if a.size else None
    for p in PERCENTILES:
        out[f"{prefix}_p{p}_s"] = float(np.percentile(a, p)) if a.size else None
    return out


def _slo_bounds(slo) -> tuple[float | None, float | None]:
    if slo is None:
        return None, None
    if isinstance(slo, Mapping):
        return slo.get("ttft_s"), slo.get("tpot_s")
    return getattr(slo, "ttft_s", None), getattr(slo, "tpot_s", None)


def slo_checks(r, slo, from_intended: bool = True) -> tuple[bool, bool]:
    """(meets TTFT bound, meets TPOT bound) for one record; failed requests meet neither.
    `from_intended` (the default): TTFT is counted from the intended send time where the record
    has one, so a client that sent late (coordinated omission) cannot hide queueing latency."""
    s_ttft, s_tpot = _slo_bounds(slo)
    if is_failed(r):
        return False, False
    t = _get(r, "ttft_s")
    if from_intended and t is not None:
        t = _get(r, "ttft_from_intended_s", t)
    ok_ttft = t is not None and (s_ttft is None or t <= s_ttft)
    p = _get(r, "tpot_s")
    if t is None:
        ok_tpot = False
    elif p is None:            # undefined TPOT: no decode phase to judge (see module docstring)
        ok_tpot = True
    else:
        ok_tpot = s_tpot is None or p <= s_tpot
    return ok_ttft, ok_tpot


def default_window(records) -> tuple[float, float] | None:
    rows = _rows(records)
    starts = [_get(r, "send_s") for r in rows]
    starts = [s for s in starts if s is not None]
    ends = []
    for r in rows:
        e = _get(r, "last_token_s")
        if e is None:
            e = _get(r, "end_s")
        if e is not None:
            ends.append(e)
    if not starts or not ends:
        return None
    return float(min(starts)), float(max(ends))


def steady_state(records, ramp_fraction: float = 0.1):
    """The steady-state part of one load point: (records, throughput window).

    Ramp-up: the requests whose intended send time falls in the first `ramp_fraction` of the
    span of intended send times met a system that was still filling (shorter queues, a smaller
    batch); they are left out of the latency percentiles and SLO attainment. Drain: after the
    last intended send no new work arrives and the batch empties, so throughput is counted over
    [ramp cut-off, last intended send] rather than up to the last token. Records without an
    intended send time fall back to their send time. Fewer than 2 send times, or
    `ramp_fraction <= 0`: everything is kept and the window is the default one."""
    rows = _rows(records)
    sends = []
    for r in rows:
        s = _get(r, "intended_send_s")
        sends.append(_get(r, "send_s") if s is None else s)
    known = [s for s in sends if s is not None]
    if ramp_fraction <= 0 or len(known) < 2 or max(known) <= min(known):
        return rows, default_window(rows)
    s0, s1 = min(known), max(known)
    cut = s0 + ramp_fraction * (s1 - s0)
    kept = [r for r, s in zip(rows, sends) if s is not None and s >= cut]
    return kept, (cut, s1)


def summarize(records, slo=None, window: tuple[float, float] | None = None) -> dict[str, Any]:
    """Summary of one deployment x load point. `records`: RequestRecords, dicts or a DataFrame.
    Values are floats, ints or None (undefined: no data)."""
    rows = _rows(records)
    ok = [r for r in rows if not is_failed(r)]
    out: dict[str, Any] = {"n_requests": len(rows), "n_failed": len(rows) - len(ok)}
    win = window if window is not None else default_window(rows)
    if win is None:
        duration = 0.0
    else:
        duration = float(win[1] - win[0])
    out["duration_s"] = duration
    # throughput over the window
    n_done, n_tok = 0, 0.0
    if win is not None:
        lo, hi = win
        for r in ok:
            last = _get(r, "last_token_s")
            if last is not None and lo <= last <= hi:
                n_done += 1
            times = list(_get(r, "chunk_times_s", []) or [])
            toks = list(_get(r, "chunk_tokens", []) or [])
            total_chunks = sum(int(k) for k in toks)
            n_out = _get(r, "n_output", total_chunks) or 0
            scale = (n_out / total_chunks) if total_chunks > 0 and n_out > total_chunks else 1.0
            n_tok += scale * sum(int(k) for t, k in zip(times, toks) if lo <= t <= hi)
    out["request_throughput_rps"] = n_done / duration if duration > 0 else None
    out["output_throughput_tps"] = n_tok / duration if duration > 0 else None
    out["n_output_tokens"] = int(sum(int(_get(r, "n_output", 0) or 0) for r in ok))
    # latency distributions
    itl_samples: list[float] = []
    gap_samples: list[float] = []
    for r in ok:
        times = list(_get(r, "chunk_times_s", []) or [])
        toks = list(_get(r, "chunk_tokens", []) or [])
        itl_samples.extend(itl_per_token(times, toks))
        gap_samples.extend(chunk_gaps([t for t, k in zip(times, toks) if int(k) > 0]))
    out.update(_stats("ttft", (_get(r, "ttft_s") for r in ok)))
    out.update(_stats("itl", itl_samples))
    out.update(_stats("tpot", (_get(r, "tpot_s") for r in ok)))
    out.update(_stats("e2e", (_get(r, "e2e_s") for r in ok)))
    out.update(_stats("chunk_gap", gap_samples))
    out.update(_stats("ttft_from_intended", (_get(r, "ttft_from_intended_s") for r in ok)))
    out.update(_stats("e2e_from_intended", (_get(r, "e2e_from_intended_s") for r in ok)))
    # reasoning / tool-call streams: time to first answer token and tokens by kind
    n_rea = sum(int(_get(r, "n_output_reasoning", 0) or 0) for r in ok)
    n_tool = sum(int(_get(r, "n_output_tool", 0) or 0) for r in ok)
    if n_rea or n_tool:
        out.update(_stats("ttfat", (_get(r, "ttfat_s") for r in ok)))
        out["n_reasoning_tokens"], out["n_tool_tokens"] = n_rea, n_tool
    # server usage vs the client's own count (None where nothing could be compared)
    flags = [_get(r, "token_count_mismatch") for r in rows]
    checked = [bool(f) for f in flags if f is not None]
    out["n_token_checked"] = len(checked)
    out["n_token_mismatch"] = sum(checked)
    # SLOs
    s_ttft, s_tpot = _slo_bounds(slo)
    out["slo_ttft_s"], out["slo_tpot_s"] = s_ttft, s_tpot
    if slo is None or (s_ttft is None and s_tpot is None) or not rows:
        out["slo_attainment"] = out["slo_attainment_from_send"] = None
        out["slo_ttft_attainment"] = out["slo_tpot_attainment"] = None
        out["slo_ttft_p90_ok"] = out["slo_tpot_p90_ok"] = None
    else:
        checks = [slo_checks(r, slo) for r in rows]
        n = len(rows)
        out["slo_attainment"] = sum(a and b for a, b in checks) / n
        out["slo_attainment_from_send"] = sum(
            a and b for a, b in (slo_checks(r, slo, from_intended=False) for r in rows)) / n
        out["slo_ttft_attainment"] = sum(a for a, _ in checks) / n
        out["slo_tpot_attainment"] = sum(b for _, b in checks) / n
        out["slo_ttft_p90_ok"] = out["slo_ttft_attainment"] >= 0.9
        out["slo_tpot_p90_ok"] = out["slo_tpot_attainment"] >= 0.9
    return out


def goodput(rates: Sequence[float], attainments: Sequence[float | None],
            target: float = 0.9) -> float | None:
    """DistServe goodput: the highest request rate at which joint SLO attainment >= target,
    linearly interpolated between the last passing and the first failing rate (points sorted by
    rate; the first crossing counts). All pass -> the highest rate measured (a lower bound).
    The lowest rate already fails -> 0.0. No usable points -> None."""
    pts = sorted((float(r), float(a)) for r, a in zip(rates, attainments)
                 if r is not None and a is not None and not math.isnan(float(a)))
    if not pts:
        return None
    prev = None
    for r, a in pts:
        if a < target:
            if prev is None:
                return 0.0
            r0, a0 = prev
            if a0 == a:
                return r0
            return r0 + (a0 - target) / (a0 - a) * (r - r0)
        prev = (r, a)
    return pts[-1][0]
