"""Per-request data frames derived from the records: what the figures draw and export.py writes.

  successful(records)     the records of successful requests
  ttft_parts(records)     each TTFT split into server-reported phases and the rest (TTFT_PARTS)
  itl_kinds(records)      per (deployment, load point): ITL samples and chunk gaps flagged by
                          the kind of engine step that produced them (ItlKinds)
  spec_frame(records)     per request: speculative-decoding counters and acceptance

Pure functions of a normalised records frame (data.load_run); metrics come from
workloads/metrics.py through data.itl_split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .data import itl_split, server_timings, spec_counters, token_prefill_flags


def successful(records: pd.DataFrame) -> pd.DataFrame:
    """The rows of successful requests (no error)."""
    return records[records["error"].isna()] if "error" in records else records


TTFT_PARTS = [("server_queue_s", "queue", "server queue"),
              ("server_prefill_s", "prefill", "prefill"),
              ("server_transfer_s", "transfer", "KV transfer"),
              ("server_admission_s", "admission", "decode admission"),
              (None, "rest", "rest (network + client)"),
              (None, "unattributed", "unattributed (server reports no phases)")]


def ttft_parts(records: pd.DataFrame) -> pd.DataFrame:
    """Per successful request with a TTFT: its TTFT split into the server-reported phases and
    the rest. Columns: deployment, load_point, ttft_s, queue, prefill, transfer, admission,
    rest, unattributed (seconds). A request without any server phase column puts its whole TTFT
    in `unattributed` (external servers); a missing single phase counts 0; the rest (network,
    client, SSE framing) is TTFT minus the phases, floored at 0."""
    cols = ["deployment", "load_point", "ttft_s"] + [p for _, p, _ in TTFT_PARTS]
    if records is None or records.empty:
        return pd.DataFrame(columns=cols)
    ok = successful(records)
    ok = ok[pd.to_numeric(ok["ttft_s"], errors="coerce").notna()]
    out = pd.DataFrame({"deployment": ok["deployment"].to_numpy(),
                        "load_point": ok["load_point"].to_numpy(),
                        "ttft_s": ok["ttft_s"].to_numpy(dtype=float)})
    phase = np.zeros((len(ok), 4))
    have = np.zeros(len(ok), dtype=bool)
    for j, (col, _, _) in enumerate(TTFT_PARTS[:4]):
        if col in ok:
            v = pd.to_numeric(ok[col], errors="coerce").to_numpy(dtype=float)
            have |= np.isfinite(v)
            phase[:, j] = np.nan_to_num(np.clip(v, 0, None), nan=0.0)
    ttft = out["ttft_s"].to_numpy()
    phase[~have] = 0.0
    for j, (_, p, _) in enumerate(TTFT_PARTS[:4]):
        out[p] = phase[:, j]
    out["rest"] = np.where(have, np.clip(ttft - phase.sum(axis=1), 0, None), 0.0)
    out["unattributed"] = np.where(have, 0.0, ttft)
    return out


@dataclass
class ItlKinds:
    """Per (deployment, load point): per-token ITL samples and per-chunk gaps, each flagged by
    whether the engine step that produced it co-batched prefill tokens."""
    itl: np.ndarray
    itl_prefill: np.ndarray
    chunk_t: np.ndarray
    chunk_gap: np.ndarray
    chunk_prefill: np.ndarray
    n_with_steps: int        # requests whose server reported token steps
    n_requests: int


def itl_kinds(records: pd.DataFrame, timings: list | None = None) -> dict[tuple, ItlKinds]:
    """ItlKinds for every (deployment, load point) of the successful records."""
    out: dict[tuple, ItlKinds] = {}
    if records is None or records.empty:
        return out
    if timings is None:
        timings = server_timings(records)
    ok_mask = records["error"].isna().to_numpy() if "error" in records else np.ones(len(records), bool)
    acc: dict[tuple, list] = {}
    for i, (dep, lp, t, k) in enumerate(zip(records["deployment"], records["load_point"],
                                            records["chunk_times_s"], records["chunk_tokens"])):
        if not ok_mask[i]:
            continue
        flags = token_prefill_flags(timings[i])
        key = (dep, lp)
        acc.setdefault(key, []).append((itl_split(t, k, flags), flags is not None))
    for key, items in acc.items():
        parts = [it[0] for it in items]
        cat = [np.concatenate([p[j] for p in parts]) if parts else np.empty(0) for j in range(5)]
        out[key] = ItlKinds(cat[0], cat[1].astype(bool), cat[2], cat[3], cat[4].astype(bool),
                            sum(1 for it in items if it[1]), len(items))
    return out


def spec_frame(records: pd.DataFrame, timings: list | None = None) -> pd.DataFrame:
    """Per successful request with speculative-decoding counters: deployment, load_point,
    proposed, accepted, verify_steps, acceptance (accepted / proposed)."""
    cols = ["deployment", "load_point", "proposed", "accepted", "verify_steps", "acceptance"]
    if records is None or records.empty:
        return pd.DataFrame(columns=cols)
    if timings is None:
        timings = server_timings(records)
    rows = []
    ok = records["error"].isna().to_numpy() if "error" in records else np.ones(len(records), bool)
    for i, (dep, lp) in enumerate(zip(records["deployment"], records["load_point"])):
        c = spec_counters(timings[i]) if ok[i] else None
        if c is None or c[0] <= 0:
            continue
        rows.append((dep, lp, c[0], c[1], c[2], c[1] / c[0]))
    return pd.DataFrame(rows, columns=cols)
