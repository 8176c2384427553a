"""Pass/fail gates (workloads/gates.py): parsing, units, evaluation on hand-made summary rows."""

from __future__ import annotations

import pytest

from infer_bench.workloads import gates as G

ROWS = [
    {"deployment": "mono", "load_point": "r1", "ttft_p90_s": 0.40, "tpot_p90_s": 0.05,
     "slo_attainment": 1.0, "n_requests": 20, "n_failed": 0},
    {"deployment": "mono", "load_point": "r2", "ttft_p90_s": 1.90, "tpot_p90_s": 0.07,
     "slo_attainment": 0.85, "n_requests": 20, "n_failed": 1},
    {"deployment": "pd", "load_point": "r1", "ttft_p90_s": 0.60, "tpot_p90_s": 0.04,
     "slo_attainment": 0.95, "n_requests": 20, "n_failed": 0},
    {"deployment": "pd", "load_point": "r2", "ttft_p90_s": None, "tpot_p90_s": 0.04,
     "slo_attainment": 0.90, "n_requests": 20, "n_failed": 0},
]


def test_parse_units_and_aliases():
    c = G.parse_check("ttft_p90<2s")
    assert (c.metric, c.op, c.threshold, c.deployment) == ("ttft_p90_s", "<", 2.0, None)
    assert G.parse_check("tpot_p99 <= 150ms").threshold == pytest.approx(0.15)
    assert G.parse_check("attainment>=90%").threshold == pytest.approx(0.9)
    c = G.parse_check("mono:goodput>=1.5")
    assert (c.metric, c.deployment, c.threshold) == ("goodput_rps", "mono", 1.5)
    for bad in ("ttft_p90", "ttft_p90 < fast", "attainment>=0.9s", "", "x=<3"):
        with pytest.raises(G.CheckError):
            G.parse_check(bad)


def test_every_covered_row_must_pass_and_missing_values_fail():
    [r] = G.evaluate([G.parse_check("ttft_p90<2s")], ROWS)
    assert not r.passed                      # pd @ r2 has no value: a broken point cannot pass
    assert [x["passed"] for x in r.rows] == [True, True, True, False]
    [r] = G.evaluate([G.parse_check("mono:ttft_p90<2s")], ROWS)
    assert r.passed and len(r.rows) == 2
    [r] = G.evaluate([G.parse_check("mono:ttft_p90<1900ms")], ROWS)
    assert not r.passed and "FAIL" in r.line() and "1900.0 ms" in r.line()
    [r] = G.evaluate([G.parse_check("attainment>=0.9")], ROWS)
    assert not r.passed and "85.0%" in r.line()
    [r] = G.evaluate([G.parse_check("errors<=5%")], ROWS)
    assert r.passed                          # mono @ r2: 1/20 = 5%


def test_goodput_and_unknown_metric():
    [r] = G.evaluate([G.parse_check("goodput>=1")], ROWS, goodputs={"mono": 1.4, "pd": 0.8})
    assert not r.passed and [x["passed"] for x in r.rows] == [True, False]
    [r] = G.evaluate([G.parse_check("nonsense_metric<1")], ROWS)
    assert not r.passed and "no row" in r.line()


def test_a_named_deployment_covers_it_in_every_scenario():
    rows = [{**r, "deployment": f"{sc}/{r['deployment']}"} for sc in ("chat", "long") for r in ROWS]
    [r] = G.evaluate([G.parse_check("mono:ttft_p90<2s")], rows)
    assert r.passed and {x["deployment"] for x in r.rows} == {"chat/mono", "long/mono"}
    [r] = G.evaluate([G.parse_check("pd:tpot_p90<50ms")], rows)
    assert r.passed and {x["deployment"] for x in r.rows} == {"chat/pd", "long/pd"}
