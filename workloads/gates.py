"""Pass/fail gates for pipelines: threshold checks on a run's summary, and their exit code.

Role in the data flow: `infer-bench run --check EXPR` (and `report --check`) parses each EXPR
here, evaluates it on the results dir's summary rows (one per deployment x load point) after the
run, prints a line per check, and exits with `EXIT_CHECK_FAILED` when any check fails.
`compare --fail-if-worse` uses `EXIT_REGRESSION` (a significant regression, decided by
`workloads.stats`).

Expression: `[DEPLOYMENT:]METRIC OP VALUE[UNIT]`, e.g. `ttft_p90<2s`, `tpot_p99<=150ms`,
`attainment>=0.9`, `attainment>=90%`, `mono:goodput>=1.5`.
- METRIC: a summary column (`ttft_p90_s`, `output_throughput_tps`, ...) or a short name:
  `ttft_p50`.. `e2e_p99` (the `_s` is implied), `attainment` (= slo_attainment), `goodput`
  (= goodput_rps, one value per deployment), `throughput` (output tokens/s), `rps`
  (requests/s), `errors` (failed share of requests).
- OP: `<`, `<=`, `>`, `>=`.
- UNIT: `s`, `ms`, `us` for times (converted to seconds), `%` for shares (divided by 100), none.
A check passes when every row it covers passes (every load point of every deployment, or of the
named one); a row with no value (no data) fails, so a broken run cannot pass a gate.
The check reads the point estimate: a threshold is a contract the user wrote, not a comparison
between two noisy measurements (that is `compare --fail-if-worse`'s job).
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from .metrics import finite_or_none as _num

EXIT_OK = 0
EXIT_FAILED_RUN = 1          # run incomplete, deployment failed, error-rate guard
EXIT_USAGE = 2               # bad flags (Typer's own code too)
EXIT_CHECK_FAILED = 3        # a --check threshold failed
EXIT_REGRESSION = 4          # compare --fail-if-worse: a significant regression
EXIT_INTERRUPTED = 130       # Ctrl-C: what completed is kept and rendered

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_UNITS = {"": 1.0, "s": 1.0, "ms": 1e3, "us": 1e6, "%": 1e2}   # divisors (exact: 1900 / 1e3 == 1.9)
_ALIASES = {"attainment": "slo_attainment", "goodput": "goodput_rps",
            "throughput": "output_throughput_tps", "rps": "request_throughput_rps",
            "errors": "error_rate"}
_LATENCY = re.compile(r"^(ttft|itl|tpot|e2e|chunk_gap|ttft_from_intended|e2e_from_intended)"
                      r"_(mean|p50|p90|p95|p99)$")
_EXPR = re.compile(r"^\s*(?:(?P<dep>[A-Za-z0-9_.\-]+):)?(?P<metric>[A-Za-z0-9_]+)\s*"
                   r"(?P<op><=|>=|<|>)\s*(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
                   r"(?P<unit>ms|us|s|%)?\s*$")


class CheckError(ValueError):
    """A check expression that cannot be parsed; the message says the accepted form."""


@dataclass(frozen=True)
class Check:
    text: str
    metric: str                # summary column
    op: str
    threshold: float           # in the column's own unit (seconds, share, req/s)
    deployment: str | None = None


@dataclass
class CheckResult:
    check: Check
    passed: bool
    rows: list[dict[str, Any]] = field(default_factory=list)   # {deployment, load_point, value, passed}

    def line(self) -> str:
        bad = [r for r in self.rows if not r["passed"]]
        if not self.rows:
            return f"FAIL {self.check.text}: no row to check (metric or deployment not in the run)"
        shown = bad or self.rows
        worst = ", ".join(
            f"{r['deployment']}" + (f" @ {r['load_point']}" if r["load_point"] is not None else "")
            + f" = {_fmt(self.check.metric, r['value'])}" for r in shown[:4])
        more = f" (+{len(shown) - 4} more)" if len(shown) > 4 else ""
        return f"{'pass' if self.passed else 'FAIL'} {self.check.text}: {worst}{more}"


def parse_check(text: str) -> Check:
    m = _EXPR.match(text or "")
    if not m:
        raise CheckError(f"--check {text!r}: expected [DEPLOYMENT:]METRIC OP VALUE[UNIT], "
                         "e.g. 'ttft_p90<2s' or 'attainment>=0.9'")
    name = m["metric"].lower()
    metric = _ALIASES.get(name, name)
    if _LATENCY.match(metric):
        metric += "_s"
    unit = m["unit"] or ""
    is_time = metric.endswith("_s")
    if unit in ("s", "ms", "us") and not is_time:
        raise CheckError(f"--check {text!r}: {name} is not a time; drop the unit {unit!r}")
    return Check(text=text.strip(), metric=metric, op=m["op"],
                 threshold=float(m["num"]) / _UNITS[unit], deployment=m["dep"])


def _fmt(metric: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "no data"
    if metric.endswith("_s"):
        return f"{v * 1e3:.1f} ms"
    if metric in ("slo_attainment", "error_rate") or metric.endswith("_attainment"):
        return f"{v:.1%}"
    return f"{v:.3g}"


def _covers(check: Check, deployment: Any) -> bool:
    """Whether `check` applies to `deployment`: every deployment when it names none; the named
    one, also as `scenario/name` in a default run's scenarios."""
    dep = str(deployment)
    return check.deployment is None or dep == check.deployment \
        or dep.endswith("/" + check.deployment)


def evaluate(checks: Sequence[Check], summary_rows: Sequence[Mapping[str, Any]],
             goodputs: Mapping[str, float | None] | None = None) -> list[CheckResult]:
    """Evaluate each check on the summary rows (dicts with deployment, load_point and the
    summary columns); `goodputs`: deployment -> goodput in req/s (None: not determined)."""
    out = []
    for c in checks:
        rows = []
        if c.metric == "goodput_rps":
            for dep, g in (goodputs or {}).items():
                if _covers(c, dep):
                    v = _num(g)
                    rows.append({"deployment": dep, "load_point": None, "value": v,
                                 "passed": v is not None and _OPS[c.op](v, c.threshold)})
        else:
            for r in summary_rows:
                dep = r.get("deployment")
                if not _covers(c, dep):
                    continue
                if c.metric == "error_rate":
                    n, f = _num(r.get("n_requests")), _num(r.get("n_failed"))
                    v = (f or 0.0) / n if n else None
                elif c.metric in r:
                    v = _num(r.get(c.metric))
                else:
                    continue
                rows.append({"deployment": dep, "load_point": r.get("load_point"), "value": v,
                             "passed": v is not None and _OPS[c.op](v, c.threshold)})
        out.append(CheckResult(check=c, passed=bool(rows) and all(r["passed"] for r in rows),
                               rows=rows))
    return out


def check_results(results_dirs, checks: Sequence[Check], target: float = 0.9) -> list[CheckResult]:
    """Evaluate `checks` on one or more results dirs (a default run's scenarios: every row of
    every dir must pass; deployments are named `scenario/deployment` when there are several)."""
    from pathlib import Path

    from .results import compute_goodput, load_results

    rows: list[dict] = []
    gps: dict[str, float | None] = {}
    dirs = [Path(d) for d in results_dirs]
    for d in dirs:
        res = load_results(d)
        prefix = f"{d.name}/" if len(dirs) > 1 else ""
        s = res.summary
        if s is None or not len(s):
            continue
        for r in s.to_dict("records"):
            rows.append({**r, "deployment": prefix + str(r["deployment"])})
        for dep, g in compute_goodput(s, target).items():
            gps[prefix + dep] = g
    return evaluate(checks, rows, gps)
