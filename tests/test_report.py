"""Report rendering: one self-contained file, plotly.js once, no external URLs, names escaped,
figures carry data, optional files optional, incomplete runs flagged."""

from __future__ import annotations

import json
import re

import pandas as pd
import plotly.graph_objects as go
import pytest

from report_fixtures import MALICIOUS, make_results_dir
from infer_bench.reports import figures as F
from infer_bench.reports.data import itl_per_token, load_run
from infer_bench.reports.html import render_compare, render_report, safe_json_for_script
from infer_bench.reports.summary import format_ms, goodput, summary_table, verdict

PLOTLY_JS_RE = re.compile(r'<script id="plotly-js">.*?</script>', re.S)


def _page_without_plotly(text: str) -> str:
    return PLOTLY_JS_RE.sub("", text)


def _traces_with_data(fig: go.Figure) -> int:
    n = 0
    for tr in fig.data:
        for attr in ("x", "y"):
            v = getattr(tr, attr, None)
            if v is not None and len(v) > 0:
                n += 1
                break
    return n


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_results_dir(tmp_path_factory.mktemp("results") / "run-a", n_deployments=3,
                            n_load_points=3, n_requests=40)


@pytest.fixture(scope="module")
def report_text(run_dir):
    path = render_report(run_dir)
    assert path == run_dir / "report.html"
    return path.read_text(encoding="utf-8")


def test_one_file_plotly_once(run_dir, report_text):
    assert [p.name for p in run_dir.glob("*.html")] == ["report.html"]
    assert report_text.count('<script id="plotly-js">') == 1
    # the plotly.js bundle's banner appears once: embedded exactly once
    assert len(re.findall(r"plotly\.js v\d+\.\d+\.\d+", report_text)) == 1
    assert report_text.count("Plotly.newPlot(") == 1  # one loop draws every figure


def test_no_external_references(report_text):
    page = _page_without_plotly(report_text)
    ext = re.findall(r'''(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//''', page, re.I)
    assert ext == []
    assert not re.search(r"@import|@font-face|url\(\s*['\"]?(?:https?:)?//", page, re.I)
    # every <script> is either inline plotly.js, inline JSON or the inline loader: no src at all
    assert not re.search(r"<script[^>]*\ssrc=", report_text, re.I)
    assert not re.search(r"<link[^>]*\shref=", report_text, re.I)


def test_malicious_name_escaped(report_text):
    page = _page_without_plotly(report_text)
    assert MALICIOUS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # inside the figure JSON the name is escaped for <script> embedding
    for block in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S):
        assert "<" not in block and "</" not in block and "<!--" not in block
        json.loads(block)  # still valid JSON
    # every script tag in the page is one we put there
    tags = re.findall(r"<script[^>]*>", report_text)
    assert all(t in ('<script id="plotly-js">', "<script>") or 'type="application/json"' in t
               for t in tags), tags


def test_safe_json_for_script_roundtrip():
    raw = json.dumps({"n": "</script><!-- x --> & \u2028"})
    safe = safe_json_for_script(raw)
    assert "</" not in safe and "<!--" not in safe and "-->" not in safe and "\u2028" not in safe
    assert json.loads(safe) == json.loads(raw)


def test_sections_present(report_text):
    for anchor in ("verdict", "summary", "fig-cdf", "fig-throughput", "fig-slo", "fig-timeline",
                   "fig-itl_time", "warnings", "spec", "environment"):
        assert f'id="{anchor}"' in report_text, anchor
    assert "incomplete-warning" not in report_text
    assert "per-token ITL" in report_text
    assert "requests failed" in report_text  # failures are warned about


def test_report_size_1000_requests(tmp_path):
    d = make_results_dir(tmp_path / "big", n_deployments=2, n_load_points=2, n_requests=250)
    assert len(pd.read_parquet(d / "requests.parquet")) == 1000
    size = render_report(d).stat().st_size
    assert size < 15 * 1024 * 1024, size


def test_figures_have_data(run_dir):
    run = load_run(run_dir)
    colors = F.deployment_colors(run.deployments)
    figs = F.report_figures(run, colors)
    assert {f.key for f in figs} >= {"cdf", "throughput", "slo", "timeline", "itl_time"}
    for f in figs:
        assert _traces_with_data(f.figure) >= 1, f.key
        assert not f.figure.layout.annotations or "no data" not in [
            a.text for a in f.figure.layout.annotations], f.key
    # one line per deployment, same color across figures
    cdf = next(f.figure for f in figs if f.key == "cdf")
    names = {tr.name for tr in cdf.data}
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in names and MALICIOUS not in names
    for tr in cdf.data:
        assert tr.line.color in colors.values()
    # steps with co-batched prefill are marked
    itl = next(f.figure for f in figs if f.key == "itl_time")
    assert any("step with prefill" in (tr.name or "") for tr in itl.data)


@pytest.mark.parametrize("fn", [
    lambda: F.latency_cdfs(pd.DataFrame()),
    lambda: F.throughput_latency(pd.DataFrame()),
    lambda: F.slo_attainment(pd.DataFrame()),
    lambda: F.request_timeline(pd.DataFrame()),
    lambda: F.itl_over_time(pd.DataFrame(), None),
    lambda: F.telemetry_figure(None),
    lambda: F.throughput_latency(pd.DataFrame({"deployment": ["a"], "load_point": [0]})),
])
def test_empty_inputs_give_no_data_figure(fn):
    fig = fn()
    assert isinstance(fig, go.Figure)
    assert any("no data" in (a.text or "") for a in fig.layout.annotations)


def test_missing_optional_files(tmp_path):
    d = make_results_dir(tmp_path / "bare", n_deployments=2, n_load_points=1, n_requests=20,
                         with_steps=False, with_summary=False, with_env=False)
    (d / "spec.json").unlink()
    text = render_report(d).read_text(encoding="utf-8")
    assert "env.json missing" in text and "spec.json missing" in text
    assert 'id="fig-cdf"' in text
    run = load_run(d)
    assert len(run.summary) == 2  # recomputed from the records
    # no records at all, only run.json: still a report
    e = tmp_path / "empty"
    e.mkdir()
    (e / "run.json").write_text(json.dumps({"schema_version": 1, "status": "incomplete"}))
    text = render_report(e).read_text(encoding="utf-8")
    assert "no data" in text and 'id="incomplete-warning"' in text


def test_jsonl_fallback_with_truncated_line(tmp_path):
    d = make_results_dir(tmp_path / "running", n_deployments=2, n_load_points=1, n_requests=15,
                         status="incomplete", with_summary=False)
    df = pd.read_parquet(d / "requests.parquet")
    (d / "requests.parquet").unlink()
    lines = [json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()})
             for r in df.to_dict("records")]
    (d / "requests.jsonl").write_text("\n".join(lines) + '\n{"deployment": "mono-2w", "load_')
    run = load_run(d)
    assert len(run.records) == 30
    text = render_report(d).read_text(encoding="utf-8")
    assert 'id="incomplete-warning"' in text


def test_incomplete_run_warns(tmp_path):
    d = make_results_dir(tmp_path / "inc", n_deployments=2, n_load_points=2, n_requests=15,
                         status="incomplete")
    text = render_report(d, tmp_path / "out" / "r.html").read_text(encoding="utf-8")
    assert 'id="incomplete-warning"' in text and "Incomplete run" in text


def test_summary_table_and_verdict(run_dir):
    run = load_run(run_dir)
    t = summary_table(run.summary)
    assert t.headers[:2] == ["Load point", "Deployment"]
    assert len(t.rows) == 9 and t.group_starts == [0, 3, 6]
    assert any(c.best for r in t.rows for c in r)
    ttft_col = t.headers.index("TTFT p90 (ms)")
    assert all(re.fullmatch(r"[\d,]+(\.\d+)?|–", r[ttft_col].text) for r in t.rows)
    v = verdict(run.summary)
    assert v and v[0].metric == "goodput"
    assert any("% below" in f.text for f in v)
    assert format_ms(0.0123) == "12.3" and format_ms(1.5) == "1,500" and format_ms(None) == "–"


def test_goodput_definition():
    assert goodput([1, 2, 4], [1.0, 0.95, 0.5], 0.9).rate == pytest.approx(2 + 0.05 / 0.45 * 2)
    g = goodput([1, 2], [1.0, 0.95], 0.9)
    assert g.rate == 2 and g.lower_bound
    assert goodput([1, 2], [0.5, 0.2], 0.9).rate == 0.0
    assert goodput([], [], 0.9).rate is None


def test_itl_per_token_spreads_multi_token_chunks():
    assert list(itl_per_token([1.0, 1.1, 1.4], [1, 1, 3])) == pytest.approx([0.1, 0.1, 0.1, 0.1])
    assert len(itl_per_token([1.0], [5])) == 0


def test_render_compare(tmp_path, run_dir):
    b = make_results_dir(tmp_path / "run-b", n_deployments=2, n_load_points=3, n_requests=20, seed=1)
    out = render_compare([run_dir, b], tmp_path / "cmp.html")
    text = out.read_text(encoding="utf-8")
    assert text.count('<script id="plotly-js">') == 1
    assert "run-a / mono-2w" in text and "run-b / mono-2w" in text
    assert MALICIOUS not in _page_without_plotly(text)
    # the same dir twice gets distinct names
    text2 = render_compare([b, b], tmp_path / "same.html").read_text(encoding="utf-8")
    assert "run-b (2)" in text2


def test_reports_never_import_backends():
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "reports"
    for p in root.glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                assert not any("backends" in n for n in names), p


def test_reads_what_results_writer_writes(tmp_path):
    """Round trip through the real writer (skipped while workloads/results.py is absent)."""
    results = pytest.importorskip("infer_bench.workloads.results")
    records = pytest.importorskip("infer_bench.workloads.records")
    d = tmp_path / "written"
    w = results.ResultsWriter(d)
    w.write_spec({"name": "written", "deployments": [{"name": MALICIOUS, "kind": "url"}],
                  "load_points": [{"name": "poisson-2rps", "arrival": {"kind": "poisson", "rate": 2.0}}],
                  "slo": {"ttft_s": 0.5, "tpot_s": 0.1}})
    w.write_env({"versions": {}, "hardware": {"cpu": "x", "cores": 2}})
    for i in range(12):
        t0 = 1.0 + i * 0.5
        rec = records.RequestRecord(
            deployment=MALICIOUS, load_point="poisson-2rps", request_id=f"r{i}",
            intended_send_s=t0, send_s=t0, first_token_s=t0 + 0.1, last_token_s=t0 + 0.5,
            end_s=t0 + 0.5, n_input=10, n_output=5, n_output_source="usage",
            chunk_times_s=[t0 + 0.1, t0 + 0.2, t0 + 0.5], chunk_tokens=[1, 1, 3],
            ttft_s=0.1, tpot_s=0.1, e2e_s=0.5, server_queue_s=0.01, server_prefill_s=0.05,
            server_transfer_s=0.01)
        if i == 3:
            rec.error, rec.error_type = "boom", "http_500"
        w.append_record(rec)
    w.append_steps([{"step": 0, "t_start": 1.02, "wall_s": 0.05, "n_prefill_tokens": 10,
                     "n_decode_seqs": 0, "blocks_used": 1}], deployment=MALICIOUS)
    w.finalize()
    text = render_report(d).read_text(encoding="utf-8")
    assert MALICIOUS not in _page_without_plotly(text)
    run = load_run(d)
    assert run.notes == [] and len(run.records) == 12 and len(run.summary) == 1
    figs = {f.key: f.figure for f in F.report_figures(run)}
    assert any(tr.name == "KV transfer" for tr in figs["timeline"].data)
    assert "1 of 12 requests failed" in text


def test_telemetry_figure(tmp_path):
    d = make_results_dir(tmp_path / "tel", n_deployments=2, n_load_points=1, n_requests=10,
                         with_telemetry=True)
    run = load_run(d)
    figs = {f.key: f.figure for f in F.report_figures(run)}
    fig = figs["telemetry"]
    assert _traces_with_data(fig) >= 4
    names = {tr.name for tr in fig.data}
    assert not any("4242" in n for n in names)  # per-pid rows dropped where a total exists
    assert 'id="fig-telemetry"' in render_report(d).read_text(encoding="utf-8")
