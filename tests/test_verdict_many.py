"""The verdict with more than two deployments (named targets) and with reasoning streams:
every deployment is compared with the first, the confidence split over the pairs; TTFAT joins
the compared figures only where a run streams reasoning/tool tokens. Synthetic records with
known distributions (no servers), so each assertion is about the verdict's logic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from infer_bench.reports.verdict import VERDICT_KEYS, verdict, verdict_keys
from infer_bench.workloads import comparisons as C
from infer_bench.workloads.spec import SLO

N = 240


def _records(name: str, ttft_ms: float, seed: int, *, reasoning_ms: float | None = None,
             lp: str = "r1") -> list[dict]:
    """N requests at 10 req/s: TTFT ~ ttft_ms (+-10% noise), 20 tokens at 20 ms each; with
    `reasoning_ms`, the first answer token comes that long after the first (reasoning) token."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(N):
        t0 = i * 0.1
        ttft = ttft_ms / 1e3 * (1 + 0.1 * rng.standard_normal())
        times = [t0 + ttft + k * 0.02 for k in range(20)]
        rea = 0
        first_answer = times[0]
        if reasoning_ms is not None:
            rea = 5
            first_answer = times[0] + reasoning_ms / 1e3 * (1 + 0.1 * rng.standard_normal())
        out.append({"deployment": name, "load_point": lp, "request_id": f"{name}-{i}",
                    "intended_send_s": t0, "send_s": t0, "first_token_s": times[0],
                    "last_token_s": times[-1], "end_s": times[-1], "n_input": 100,
                    "n_output": 20, "chunk_times_s": times, "chunk_tokens": [1] * 20,
                    "ttft_s": ttft, "ttft_from_intended_s": ttft, "tpot_s": 0.02,
                    "e2e_s": times[-1] - t0, "e2e_from_intended_s": times[-1] - t0,
                    "first_answer_token_s": first_answer, "ttfat_s": first_answer - t0,
                    "n_output_reasoning": rea, "n_output_answer": 20 - rea, "n_output_tool": 0,
                    "error": None, "error_type": None, "repeat": 0})
    return out


def _findings(recs: list[dict], deps: list[str]):
    return verdict(pd.DataFrame(recs), pd.DataFrame(), slo=SLO(ttft_s=1.0, tpot_s=0.1),
                   deployments=deps, load_points=["r1"])


def test_three_deployments_each_compared_with_the_first():
    recs = (_records("base", 100, 1) + _records("same", 100, 2) + _records("fast", 50, 3))
    found = _findings(recs, ["base", "same", "fast"])
    lp = [f for f in found if f.metric == "load_point"]
    assert [f.text.split(":")[0] for f in lp] == ["At r1, same vs base", "At r1, fast vs base"]
    assert ("ttft_p50_s", "fast") in lp[1].winners
    assert not any(m.startswith("ttft") for m, _ in lp[0].winners)
    method = next(f for f in found if f.metric == "method").text
    # 7 figures x 2 pairs in one family: each interval at 1 - 0.05/14
    assert f"{1 - 0.05 / 14:.2%}" in method and "compared with the first deployment, base" in method
    assert not any("appear in the tables" in f.text for f in found)


def test_two_deployments_keep_the_single_pair_wording():
    found = _findings(_records("a", 100, 1) + _records("b", 50, 2), ["a", "b"])
    lp = [f for f in found if f.metric == "load_point"]
    assert len(lp) == 1 and lp[0].text.startswith("At r1: ")
    method = next(f for f in found if f.metric == "method").text
    assert f"{1 - 0.05 / len(VERDICT_KEYS):.1%}" in method


def test_confidence_split_over_pairs_widens_intervals():
    """The same pair compared alone and as one of three pairs: the interval of the latter is at
    a higher confidence, so its half-width is no smaller."""
    recs = _records("a", 100, 1) + _records("b", 103, 2)
    df = pd.DataFrame(recs)
    one = C.compare_load_point(df, ["a", "b"], "r1", keys=["ttft_p50_s"])[0]
    three = C.compare_load_point(df, ["a", "b"], "r1", keys=["ttft_p50_s"],
                                 family_confidence=1 - 0.05 / 3)[0]
    assert three.confidence > one.confidence
    assert (three.diff_hi - three.diff_lo) >= (one.diff_hi - one.diff_lo)


def test_ttfat_compared_only_with_reasoning_streams():
    plain = _records("a", 100, 1) + _records("b", 100, 2)
    assert verdict_keys(pd.DataFrame(plain)) == VERDICT_KEYS
    # same first token, but b's answer starts 200 ms after it and a's 20 ms after
    rea = _records("a", 100, 1, reasoning_ms=20) + _records("b", 100, 2, reasoning_ms=200)
    keys = verdict_keys(pd.DataFrame(rea))
    assert keys[-2:] == ("ttfat_p50_s", "ttfat_p90_s")
    lp = [f for f in _findings(rea, ["a", "b"]) if f.metric == "load_point"][0]
    assert ("ttfat_p50_s", "a") in lp.winners and "TTFAT p50" in lp.text
    assert not any(m.startswith("ttft_") for m, _ in lp.winners)


@pytest.mark.parametrize("late_ms", [0.0, 30.0])
def test_ttfat_series_counts_from_intended_send(late_ms):
    recs = _records("a", 100, 1, reasoning_ms=50)
    for r in recs:                     # the client sent late: intended time earlier than send
        r["intended_send_s"] = r["send_s"] - late_ms / 1e3
    groups = C.measured_groups(pd.DataFrame(recs), "a", "r1")
    s = C.series(groups[0], "ttfat")
    want = np.array([r["first_answer_token_s"] - r["intended_send_s"] for r in recs])
    assert np.allclose(np.sort(s), np.sort(want))
