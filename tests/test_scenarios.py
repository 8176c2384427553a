"""The default run's scenarios and their index page (workloads/scenarios.py, reports/scenarios.py)."""

from __future__ import annotations

import json

from report_fixtures import make_results_dir

from infer_bench.reports.scenarios import render_scenarios
from infer_bench.workloads.scenarios import default_scenarios, estimate_seconds


def test_default_scenarios_expect_different_winners_within_budget():
    scs = default_scenarios()
    assert {s.expected_mode for s in scs} == {"mono", "disagg"}
    assert all(s.focus and s.load_points and s.slo.tpot_s for s in scs)
    long = next(s for s in scs if s.name == "long-prompt")
    chat = next(s for s in scs if s.name == "chat")
    assert long.workload.input_len.mean >= 8 * chat.workload.input_len.mean
    assert long.slo.tpot_s < chat.slo.tpot_s               # the tight TPOT SLO
    assert estimate_seconds(scs, 2) <= 8 * 60               # the budget, 2 deployments


def test_index_page_states_each_scenario_outcome(tmp_path):
    dirs = []
    for sc in default_scenarios():
        d = make_results_dir(tmp_path / sc.name, n_deployments=2, n_load_points=3, n_requests=40,
                             name=sc.name)
        spec = json.loads((d / "spec.json").read_text())
        spec["scenario"] = sc.to_dict()
        (d / "spec.json").write_text(json.dumps(spec))
        dirs.append(d)
    text = render_scenarios(tmp_path, dirs).read_text(encoding="utf-8")
    for sc in default_scenarios():
        assert sc.title in text and f'href="{sc.name}/report.html"' in text
    # the fixture's second deployment is faster to first token (a disagg deployment, by its
    # spec): against the chat expectation (mono ahead on TTFT) the page must say so
    assert "Contrary to expectation" in text or "Not confirmed" in text or "As expected" in text
    assert "<script>alert(1)</script>" not in text         # names are escaped


def test_run_without_workload_flags_runs_the_scenarios(monkeypatch):
    from typer.testing import CliRunner

    import infer_bench.cli.run_cmd as run_cmd
    from infer_bench.cli.main import app

    seen = []
    monkeypatch.setattr(run_cmd, "run", lambda **kw: seen.append(kw["scenarios"]))
    for args in (["run"], ["run", "--repeats", "2"], ["run", "--rates", "1"],
                 ["run", "--input-len", "64"], ["run", "--url", "http://127.0.0.1:9"]):
        assert CliRunner().invoke(app, args).exit_code == 0
    assert seen == [True, True, False, False, False]


def test_verdict_counts_chips_from_the_spec_everywhere(tmp_path):
    """The index page and a run's own report rank goodput per chip with the same chip counts
    (spec.json's), not one chip each."""
    from infer_bench.reports.data import load_run
    from infer_bench.reports.verdict import chips_of, verdict_for_run

    d = make_results_dir(tmp_path / "r", n_deployments=2, n_load_points=3, n_requests=20)
    spec = json.loads((d / "spec.json").read_text())
    for dep in spec["deployments"]:
        dep["chips"] = 2
    (d / "spec.json").write_text(json.dumps(spec))
    run = load_run(d)
    assert set(chips_of(run.spec).values()) == {2}
    goodput = [f.text for f in verdict_for_run(run) if f.metric == "goodput"][0]
    assert "per chip on 2" in goodput and "per chip on 1" not in goodput
