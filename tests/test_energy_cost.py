"""Energy per load point (fake NVML, fake RAPL sysfs) and cost per token (workloads/energy.py,
workloads/cost.py), through the runner on the mock server, the summary and the verdict."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from infer_bench.workloads.cost import (
    add_cost_columns, chip_hours, usd_per_million_output_tokens, usd_per_slo_request,
    validate_price,
)
from infer_bench.workloads.energy import (
    EnergyReading, open_energy_meter, open_rapl_energy, rapl_package_domains, wrapped_delta,
)
from infer_bench.workloads.results import load_totals


# ----------------------------------------------------------------------------- fake NVML

def fake_nvml(steps_mj: list[int], *, supported: bool = True,
              init_error: str | None = None) -> types.ModuleType:
    """A pynvml whose GPU i's energy counter advances by steps_mj[i] millijoules per read."""
    nv = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    nv.NVMLError = NVMLError
    nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM, nv.NVML_TEMPERATURE_GPU = 1, 2, 0
    counters = [10_000_000 * (i + 1) for i in range(len(steps_mj))]
    nv.reads = [0] * len(steps_mj)

    def nvmlInit():
        if init_error:
            raise NVMLError(init_error)

    def energy(h):
        if not supported:
            raise NVMLError("Not Supported")
        i = h[1]
        nv.reads[i] += 1
        counters[i] += steps_mj[i]
        return counters[i]

    nv.nvmlInit, nv.nvmlShutdown = nvmlInit, lambda: None
    nv.nvmlDeviceGetCount = lambda: len(steps_mj)
    nv.nvmlDeviceGetHandleByIndex = lambda i: ("h", i)
    nv.nvmlDeviceGetName = lambda h: f"Fake H100 {h[1]}".encode()
    nv.nvmlDeviceGetTotalEnergyConsumption = energy
    nv.nvmlSystemGetDriverVersion = lambda: b"999.1"
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=2**34, used=2**30, free=0)
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50, memory=20)
    nv.nvmlDeviceGetPowerUsage = lambda h: 300_000
    nv.nvmlDeviceGetClockInfo = lambda h, kind: 1500
    nv.nvmlDeviceGetTemperature = lambda h, kind: 60
    return nv


def test_nvml_meter_gives_the_counter_delta_in_joules(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([2500, 1500]))
    meter = open_energy_meter(rapl_root=tmp_path / "none")
    assert meter.source == "nvml"
    assert meter.note == "NVML: 2 GPU(s) of this host (Fake H100 0, Fake H100 1)"
    before, after = meter.read(), meter.read()
    total, per, note = meter.joules(before, after)
    assert (total, per, note) == (4.0, {"gpu0": 2.5, "gpu1": 1.5}, None)


def test_nvml_without_energy_counter_or_driver_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([1], supported=False))
    m = open_energy_meter(rapl_root=tmp_path / "none")
    assert m.source == "unavailable"
    assert m.note == (f"energy unavailable: NVML: no energy counter (Not Supported); "
                      f"RAPL: no {tmp_path / 'none'} (the kernel exposes no RAPL here, e.g. a VM)")
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([1], init_error="Driver Not Loaded"))
    m = open_energy_meter(rapl_root=tmp_path / "none")
    assert m.note.startswith("energy unavailable: NVML: Driver Not Loaded; RAPL: no ")
    assert m.joules(m.read(), m.read()) == (None, {}, m.note)


def test_nvml_lost_gpu_or_reset_counter_gives_no_total(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([1000, 1000]))
    m = open_energy_meter(rapl_root=tmp_path / "none")
    b = EnergyReading(0.0, {"gpu0": 5000, "gpu1": 9000})
    a = EnergyReading(1.0, {"gpu0": 7000}, {"gpu1": "NVMLError: GPU is lost"})
    total, per, note = m.joules(b, a)
    assert total is None and per == {"gpu0": 2.0} and note == "gpu1: NVMLError: GPU is lost"
    total, per, note = m.joules(b, EnergyReading(1.0, {"gpu0": 7000, "gpu1": 100}))
    assert total is None and note == "gpu1: counter went back (9000 -> 100)"


# ----------------------------------------------------------------------------- fake RAPL

def rapl_dir(root: Path, zones: dict[str, tuple[str, int | str, int | None]]) -> Path:
    """zones: dir name -> (name, energy_uj, max_energy_range_uj)."""
    for z, (name, uj, rng) in zones.items():
        d = root / z
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{uj}\n")
        if rng is not None:
            (d / "max_energy_range_uj").write_text(f"{rng}\n")
    return root


def test_rapl_packages_with_wraparound(tmp_path):
    root = rapl_dir(tmp_path / "powercap", {
        "intel-rapl:0": ("package-0", 262_143_000_000, 262_143_328_850),
        "intel-rapl:0:0": ("core", 5, 262_143_328_850),       # inside the package: not added
        "intel-rapl:1": ("package-1", 1_000_000, 262_143_328_850),
        "intel-rapl:2": ("psys", 7, 262_143_328_850),         # not a package
    })
    meter, why = open_rapl_energy(root)
    assert why == "" and meter.source == "rapl"
    assert list(meter.domains) == ["package-0", "package-1"]
    before = meter.read()
    (root / "intel-rapl:0" / "energy_uj").write_text("671150\n")     # wrapped past the range
    (root / "intel-rapl:1" / "energy_uj").write_text("4000000\n")
    total, per, note = meter.joules(before, meter.read())
    # package-0: 262_143_328_850 - 262_143_000_000 + 671_150 = 1_000_000 uJ = 1 J; package-1: 3 J
    assert per == {"package-0": 1.0, "package-1": 3.0} and total == 4.0 and note is None


def test_wrapped_delta():
    assert wrapped_delta(10, 25, 100) == 15
    assert wrapped_delta(90, 5, 100) == 15
    assert wrapped_delta(90, 5, None) is None


def test_rapl_unreadable_or_absent_is_unavailable(tmp_path):
    root = rapl_dir(tmp_path / "pc", {"intel-rapl:0": ("package-0", 1, 100),
                                      "intel-rapl:1": ("package-1", 1, 100)})
    # unreadable: a read that fails with an OSError (root reads a mode-000 file, so not chmod)
    (root / "intel-rapl:1" / "energy_uj").unlink()
    (root / "intel-rapl:1" / "energy_uj").mkdir()
    domains, why = rapl_package_domains(root)
    assert domains == []          # one package unreadable: no partial sum of the host
    assert why == f"RAPL: {root / 'intel-rapl:1' / 'energy_uj'} not readable (Is a directory)"
    assert rapl_package_domains(tmp_path / "nope")[1] == \
        f"RAPL: no {tmp_path / 'nope'} (the kernel exposes no RAPL here, e.g. a VM)"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert rapl_package_domains(empty) == ([], f"RAPL: no package domain under {empty}")


def test_this_host_energy_source_is_stated():
    """Whatever this machine has, the meter names a source or says why there is none."""
    m = open_energy_meter()
    assert m.source in ("nvml", "rapl", "unavailable") and m.note
    if m.source == "unavailable":
        assert "NVML:" in m.note and "RAPL:" in m.note


# ----------------------------------------------------------------------------- cost

def test_cost_arithmetic_by_hand():
    # $2 per chip-hour, 4 chips, 90 s: 2 * 4 * 90 / 3600 = $0.20
    assert chip_hours(4, 90) == pytest.approx(0.1)
    assert usd_per_million_output_tokens(2.0, 4, 90, 50_000) == pytest.approx(0.2 / 50_000 * 1e6)
    assert usd_per_million_output_tokens(2.0, 4, 90, 50_000) == pytest.approx(4.0)
    assert usd_per_slo_request(2.0, 4, 90, 40) == pytest.approx(0.005)
    assert usd_per_slo_request(2.0, 4, 90, 0) == math.inf
    assert usd_per_million_output_tokens(2.0, 4, 90, 0) == math.inf
    assert usd_per_slo_request(2.0, 4, None, 3) is None
    assert usd_per_million_output_tokens(None, 4, 90, 3) is None


def test_validate_price():
    assert validate_price("2.5") == 2.5
    for bad in (-1, 0, "nan", "inf", "cheap"):
        with pytest.raises(ValueError, match="price per chip-hour must be a"):
            validate_price(bad)


def test_add_cost_columns_uses_each_deployments_chips():
    spec = {"deployments": [{"name": "mono", "chips": 2}, {"name": "pd", "chips": 4}],
            "price_per_chip_hour": 3.0}
    s = pd.DataFrame({"deployment": ["mono", "pd"], "load_point": ["1rps", "1rps"],
                      "load_wall_s": [120.0, 120.0], "load_output_tokens": [10_000, 0],
                      "load_slo_met": [50, 0]})
    out = add_cost_columns(s, spec)
    assert list(out["chips"]) == [2, 4]
    # mono: 3 * 2 * 120 / 3600 = $0.20; / 10k tokens * 1e6 = $20 per M; / 50 = $0.004
    assert out["usd_per_m_output_tokens"][0] == pytest.approx(20.0)
    assert out["usd_per_slo_request"][0] == pytest.approx(0.004)
    # no token, no good request: infinite cost, stored as missing (JSON has no infinity)
    assert out[["usd_per_m_output_tokens", "usd_per_slo_request"]].iloc[1].isna().all()
    # another price given to the report wins over spec.json's
    assert add_cost_columns(s, spec, price=6.0)["usd_per_slo_request"][0] == pytest.approx(0.008)
    assert "chips" not in add_cost_columns(s, {"deployments": spec["deployments"]})


def _rec(dep, lp, repeat, n_output, ttft, error=None):
    return {"deployment": dep, "load_point": lp, "repeat": repeat, "n_output": n_output,
            "ttft_s": ttft, "ttft_from_intended_s": ttft, "tpot_s": 0.01, "error": error,
            "intended_send_s": 0.0, "send_s": 0.0, "chunk_times_s": [], "chunk_tokens": []}


def test_load_totals_pool_repeats_and_count_successful_tokens():
    recs = pd.DataFrame([_rec("a", "x", 0, 10, 0.1), _rec("a", "x", 0, 7, 0.1, error="HTTP 500"),
                         _rec("a", "x", 1, 20, 5.0), _rec("a", "x", 1, 30, 0.2)])
    slo = {"ttft_s": 1.0, "tpot_s": 0.1}
    rows = [{"duration_s": 2.0, "energy_j": 30.0, "source": "nvml"},
            {"duration_s": 3.0, "energy_j": 60.0, "source": "nvml"}]
    t = load_totals(recs, slo, [(rows[0], None), (rows[1], None)])
    assert t == {"load_wall_s": 5.0, "load_output_tokens": 60, "load_slo_met": 2,
                 "energy_j": 90.0, "energy_source": "nvml", "j_per_output_token": 1.5}
    # one repeat without energy: no total (a partial sum would understate); wall from the window
    t = load_totals(recs, slo, [(rows[0], None),
                                ({"duration_s": None, "energy_j": None, "source": "unavailable"},
                                 (10.0, 14.0))])
    assert t["energy_j"] is None and t["energy_source"] == "unavailable"
    assert t["j_per_output_token"] is None and t["load_wall_s"] == 6.0
    assert load_totals(recs, None, [(None, None)])["energy_source"] is None


# ----------------------------------------------------------------------------- the real run path

def test_fake_nvml_gives_exact_j_per_token_through_the_runner(tmp_path, monkeypatch, mock_process):
    """A two-GPU fake NVML whose counters advance 1.5 J + 0.5 J per read: every load point reads
    them once before and once after, so each load point used exactly 2 J; the mock server sends
    exactly 8 tokens per request."""
    from infer_bench.backends.launch import ExternalDeploymentSpec
    from infer_bench.reports.data import load_run
    from infer_bench.reports.verdict import verdict_for_run
    from infer_bench.workloads.runner import RunSpec, run
    from infer_bench.workloads.spec import SLO, ArrivalSpec, LengthDist, LoadPoint, WorkloadSpec

    nv = fake_nvml([1500, 500])
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    a = mock_process("--ttft-ms", "5", "--token-delay-ms", "1")
    b = mock_process("--ttft-ms", "5", "--token-delay-ms", "1")
    lps = [LoadPoint(name=f"{r}rps", arrival=ArrivalSpec(kind="constant", rate=r)) for r in (50, 100)]
    spec = RunSpec(deployments=[ExternalDeploymentSpec(name="A", url=a, chips=2),
                                ExternalDeploymentSpec(name="B", url=b, chips=4)],
                   workload=WorkloadSpec(input_len=LengthDist.fixed(16),
                                         output_len=LengthDist.fixed(8), num_requests=5),
                   load_points=lps, slo=SLO(ttft_s=5.0, tpot_s=1.0), out_dir=tmp_path / "run",
                   warmup_requests=1, warmup_max_requests=1, repeats=1, price_per_chip_hour=3.6)
    out = run(spec)
    rows = [json.loads(x) for x in (out / "energy.jsonl").read_text().splitlines()]
    # one probe when the meter opens, then a read before and one after each load point
    assert len(rows) == 4 and nv.reads == [1 + 8, 1 + 8]
    for r in rows:
        assert r["source"] == "nvml" and r["energy_j"] == 2.0 and r["note"] is None
        assert r["domains"] == {"gpu0": 1.5, "gpu1": 0.5} and r["duration_s"] > 0
    assert json.loads((out / "run.json").read_text())["energy"]["source"] == "nvml"
    assert json.loads((out / "spec.json").read_text())["price_per_chip_hour"] == 3.6
    s = pd.read_csv(out / "summary.csv").set_index(["deployment", "load_point"])
    assert set(s["energy_source"]) == {"nvml"}
    assert (s["load_output_tokens"] == 5 * 8).all()
    assert (s["energy_j"] == 2.0).all()
    assert (s["j_per_output_token"] == 2.0 / 40).all()
    # cost: 3.6 $/chip-hour = $0.001 per chip-second
    for (dep, lp), r in s.iterrows():
        chips = {"A": 2, "B": 4}[dep]
        assert r["chips"] == chips
        assert r["usd_per_m_output_tokens"] == pytest.approx(
            0.001 * chips * r["load_wall_s"] / 40 * 1e6)
        assert r["usd_per_slo_request"] == pytest.approx(0.001 * chips * r["load_wall_s"] / 5)
        assert r["load_slo_met"] == 5
    run_data = load_run(out)
    texts = [f.text for f in verdict_for_run(run_data)]
    energy = [t for t in texts if t.startswith("Energy")]
    assert energy and "A 0.05 J, B 0.05 J per output token" in energy[0]
    assert "not the target's" in energy[0]               # URL targets: the measuring host's energy
    cost = [t for t in texts if t.startswith("Cost at $3.6 per chip-hour")]
    assert cost and "per million output tokens" in cost[0]


# ----------------------------------------------------------------------------- report, compare, CLI

def _energy_dir(path: Path, joules: float | None = 80.0, **kw) -> Path:
    """A synthetic results dir (tests/report_fixtures.py) plus energy.jsonl rows: `joules` and
    10 s of wall time per deployment x load point; no summary.csv, so it is recomputed."""
    from report_fixtures import make_results_dir

    d = make_results_dir(path, n_deployments=2, n_load_points=2, n_requests=20,
                         with_summary=False, **kw)
    recs = pd.read_parquet(d / "requests.parquet")
    with open(d / "energy.jsonl", "w") as f:
        for (dep, lp), _ in recs.groupby(["deployment", "load_point"], sort=False):
            f.write(json.dumps({"deployment": dep, "load_point": lp, "repeat": 0,
                                "source": "rapl" if joules is not None else "unavailable",
                                "energy_j": joules, "duration_s": 10.0, "domains": {},
                                "note": None if joules is not None else "no counter"}) + "\n")
    return d


def test_summary_from_energy_jsonl_matches_the_records(tmp_path):
    from infer_bench.workloads.results import load_results

    d = _energy_dir(tmp_path / "run")
    res = load_results(d)
    recs = res.records
    for _, r in res.summary.iterrows():
        g = recs[(recs["deployment"] == r["deployment"]) & (recs["load_point"] == r["load_point"])]
        tokens = int(g[g["error"].isna()]["n_output"].sum())
        assert r["load_output_tokens"] == tokens and r["load_wall_s"] == 10.0
        assert r["energy_j"] == 80.0 and r["energy_source"] == "rapl"
        assert r["j_per_output_token"] == pytest.approx(80.0 / tokens)
    assert "usd_per_m_output_tokens" not in res.summary        # no price in spec.json


def _cli(*args: str) -> int:
    from infer_bench.cli.main import main

    return main(list(args))


def test_report_and_compare_with_a_price(tmp_path, capsys):
    a = _energy_dir(tmp_path / "a")
    b = _energy_dir(tmp_path / "b", seed=1, joules=None)
    assert _cli("report", str(a)) == 0
    html = (a / "report.html").read_text()
    assert "J / output token" in html and "$ / M output tokens" not in html
    assert "Cost at $" not in html
    assert _cli("report", str(a), "--price-per-chip-hour", "2") == 0
    html = (a / "report.html").read_text()
    assert "$ / M output tokens" in html and "$ / request in SLO" in html
    assert "Cost at $2 per chip-hour" in html
    assert "Energy (RAPL, the CPU packages of the measuring host" in html
    assert _cli("report", str(b)) == 0          # energy unavailable: no J column
    assert "J / output token" not in (b / "report.html").read_text()
    out = tmp_path / "cmp.html"
    assert _cli("compare", str(a), str(b), "--out", str(out), "--price-per-chip-hour", "3") == 0
    assert "Cost at $3 per chip-hour" in out.read_text()


@pytest.mark.parametrize("cmd", [["run"], ["report", "."], ["compare", ".", "."]])
def test_bad_price_is_one_line_before_anything_runs(cmd, capsys, tmp_path):
    for bad in ("-1", "0", "free"):
        assert _cli(*cmd, "--price-per-chip-hour", bad) == 1
        err = capsys.readouterr().err.strip()
        assert err == (f"error: --price-per-chip-hour takes a positive number of US dollars "
                       f"per chip-hour, got '{bad}'")


def test_verdict_says_why_energy_is_unavailable_and_when_cost_is_unknown():
    from infer_bench.reports.verdict import cost_energy_findings

    s = pd.DataFrame({"deployment": ["a", "b"], "load_point": ["x", "x"],
                      "energy_source": ["unavailable", "unavailable"],
                      "j_per_output_token": [None, None], "load_wall_s": [None, None]})
    s = add_cost_columns(s, {"deployments": [{"name": "a"}, {"name": "b"}]}, price=2.0)
    texts = [f.text for f in cost_energy_findings(
        s, ["a", "b"], price=2.0,
        energy_note="energy unavailable: NVML: Driver Not Loaded; RAPL: no /sys/class/powercap")]
    assert texts == [
        "Cost at $2 per chip-hour: unknown (this results dir records no wall time per load point).",
        "Energy per output token: unavailable (NVML: Driver Not Loaded; RAPL: no "
        "/sys/class/powercap)."]
    # no price, no energy rows (an older results dir): nothing to say
    assert cost_energy_findings(s.drop(columns=["energy_source"]), ["a", "b"], price=None) == []


def test_cost_finding_per_deployment_and_load_point_by_hand():
    from infer_bench.reports.verdict import cost_energy_findings

    spec = {"deployments": [{"name": "mono", "chips": 2}, {"name": "pd", "chips": 4}]}
    s = pd.DataFrame({"deployment": ["pd", "mono"], "load_point": ["1rps", "1rps"],
                      "load_wall_s": [60.0, 60.0], "load_output_tokens": [0, 6000],
                      "load_slo_met": [0, 30], "energy_source": ["nvml", "nvml"],
                      "j_per_output_token": [None, 0.125]})
    texts = [f.text for f in cost_energy_findings(add_cost_columns(s, spec, price=1.5), ["mono", "pd"],
                                                  price=1.5, spec=spec)]
    # mono: 1.5 * 2 * 60 / 3600 = $0.05; / 6000 tokens * 1e6 = $8.33 per M; / 30 = $0.00167
    assert texts[0] == ("Cost at $1.5 per chip-hour (chips x each load point's wall time, point "
                        "estimates): at 1rps: mono (2 chips) $8.33 per million output tokens, "
                        "$0.00167 per request that met the SLO; pd (4 chips) no output token, "
                        "no request met the SLO.")
    assert texts[1].startswith("Energy (NVML, the GPUs of the measuring host")
    assert texts[1].endswith("at 1rps: mono 0.125 J per output token.")


def test_console_summary_shows_energy_and_cost_only_when_present(tmp_path):
    import io

    from rich.console import Console

    from infer_bench.cli.run_cmd import print_summary

    def printed(d) -> str:
        buf = io.StringIO()
        print_summary(Console(file=buf, width=250), d)
        return buf.getvalue()

    with_energy = printed(_energy_dir(tmp_path / "a"))
    assert "J/tok" in with_energy and "$/M tok" not in with_energy
    d = _energy_dir(tmp_path / "b", joules=None)
    assert "J/tok" not in printed(d)
    spec = json.loads((d / "spec.json").read_text())
    (d / "spec.json").write_text(json.dumps({**spec, "price_per_chip_hour": 2.0}))
    priced = printed(d)
    assert "$/M tok" in priced and "$/req in SLO" in priced and "J/tok" not in priced
