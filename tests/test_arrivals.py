"""Send schedules (workloads/arrivals.py) and spec round trips (workloads/spec.py)."""

from __future__ import annotations

import numpy as np
import pytest

from infer_bench.workloads.arrivals import gaps, send_times
from infer_bench.workloads.spec import (SLO, ArrivalSpec, LengthDist, LoadPoint, WorkloadSpec,
                                        load_point_info)


def test_same_seed_same_times_bit_for_bit():
    a = send_times(ArrivalSpec("poisson", rate=5.0, seed=42), 1000)
    b = send_times(ArrivalSpec("poisson", rate=5.0, seed=42), 1000)
    c = send_times(ArrivalSpec("poisson", rate=5.0, seed=43), 1000)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0)


def test_poisson_mean_rate():
    g = gaps(ArrivalSpec("poisson", rate=8.0, seed=1), 20001)
    # mean gap 1/8 within 3% over 20000 samples (std of the mean ~0.7%)
    assert 1.0 / g.mean() == pytest.approx(8.0, rel=0.03)
    assert g.std() / g.mean() == pytest.approx(1.0, rel=0.05)   # exponential: CV 1


def test_constant_gaps_exact():
    t = send_times(ArrivalSpec("constant", rate=4.0), 5)
    assert t.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_gamma_burstiness_changes_cv():
    for b in (0.25, 1.0, 4.0):
        g = gaps(ArrivalSpec("gamma", rate=10.0, burstiness=b, seed=7), 20001)
        assert 1.0 / g.mean() == pytest.approx(10.0, rel=0.05)
        assert g.std() / g.mean() == pytest.approx(1.0 / np.sqrt(b), rel=0.07)


def test_concurrency_has_no_schedule():
    assert send_times(ArrivalSpec("concurrency", concurrency=4), 10) is None
    with pytest.raises(ValueError):
        ArrivalSpec("concurrency")
    with pytest.raises(ValueError):
        ArrivalSpec("poisson")


def test_spec_round_trip():
    w = WorkloadSpec(input_len="lognormal:128,0.5", output_len=32, num_requests=7, seed=3,
                     endpoint="chat", shared_prefix_len=16)
    assert WorkloadSpec.from_dict(w.to_dict()) == w
    lp = LoadPoint("r2", ArrivalSpec("gamma", rate=2.0, burstiness=0.5, seed=1))
    assert LoadPoint.from_dict(lp.to_dict()) == lp
    assert SLO.from_dict(SLO(0.5, 0.05).to_dict()) == SLO(0.5, 0.05)
    assert LengthDist.parse("uniform:4,8").sample(np.random.default_rng(0), 100).min() >= 4
    x = LengthDist.parse("normal:100,10").sample(np.random.default_rng(0), 5000)
    assert x.mean() == pytest.approx(100, rel=0.02)
    y = LengthDist.parse("lognormal:100,0.5").sample(np.random.default_rng(0), 20000)
    assert y.mean() == pytest.approx(100, rel=0.03)


def test_load_point_info_reads_rates_from_spec_json():
    spec = {"load_points": [LoadPoint("p2", ArrivalSpec("poisson", rate=2.0)).to_dict(),
                            LoadPoint("c4", ArrivalSpec("concurrency", concurrency=4)).to_dict(),
                            {"arrival": {"kind": "poisson", "rate": 9.0}},     # no name: skipped
                            {"name": "bare"}]}
    info = load_point_info(spec)
    assert list(info) == ["p2", "c4", "bare"]
    assert info["p2"] == {"arrival_kind": "poisson", "rate_rps": 2.0, "concurrency": None}
    assert info["c4"] == {"arrival_kind": "concurrency", "rate_rps": None, "concurrency": 4}
    assert info["bare"] == {"arrival_kind": None, "rate_rps": None, "concurrency": None}
    assert load_point_info(None) == {} and load_point_info({}) == {}
