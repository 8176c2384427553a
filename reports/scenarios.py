"""The default run's index page: one verdict per scenario, against what physics expects.

Role in the data flow: `infer-bench run` (no workload flags) writes one results dir per scenario
(workloads/scenarios.py) and then calls `render_scenarios(out, dirs)`, which reads those dirs only
(spec.json's `scenario` block says what was expected) and writes `<out>/report.html`: per
scenario, the expectation, what was measured on the figures it is about (a winner only where the
interval says so: reports/verdict.py), the whole verdict, the core placement, and a link to the
scenario's full report, whose "where the time to first token goes" and "decode interference"
sections are the evidence for the why.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

from infer_bench.workloads.comparisons import BY_KEY

from .data import RunData, load_run
from .verdict import verdict_for_run

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>infer-bench: default run</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; max-width: 980px; margin: 2em auto; color: #222; }}
section {{ border: 1px solid #ddd; border-radius: 8px; padding: 0.5em 1.2em; margin: 1.2em 0; }}
.outcome {{ font-weight: 600; }} .as-expected {{ color: #1a7f37; }} .contrary {{ color: #b42318; }}
.open {{ color: #9a6700; }} li {{ margin: 0.3em 0; }} .note {{ color: #555; font-size: 13px; }}
</style></head><body>
<h1>Monolithic vs disaggregated: the default run</h1>
<p class="note">Each scenario is its own results dir with its own report. A winner is named only
where the 95% interval of the difference excludes no difference; otherwise the verdict says how
large a difference the data cannot rule out.</p>
{sections}
</body></html>
"""


def _modes(run: RunData) -> dict[str, str]:
    return {str(d.get("name")): str(d.get("mode") or d.get("kind") or "")
            for d in run.spec.get("deployments") or [] if isinstance(d, dict)}


def outcome(run: RunData, findings) -> tuple[str, str]:
    """(css class, sentence): did the measured winners on the scenario's focus figures match the
    expected deployment mode?"""
    sc = run.spec.get("scenario") or {}
    focus = list(sc.get("focus") or [])
    expected = str(sc.get("expected_mode") or "")
    modes = _modes(run)
    won = {m: d for f in findings for m, d in getattr(f, "winners", ()) if m in focus}
    labels = lambda keys: ", ".join(BY_KEY[k].label if k in BY_KEY else k for k in keys)  # noqa: E731
    if not focus or not expected:
        return "open", "No expectation recorded for this run."
    agree = [m for m, d in won.items() if modes.get(d, "").startswith(expected)]
    against = [m for m, d in won.items() if not modes.get(d, "").startswith(expected)]
    if against:
        return "contrary", (f"Contrary to expectation: {', '.join(sorted({won[m] for m in against}))} "
                            f"measured ahead on {labels(against)}.")
    if agree:
        rest = [m for m in focus if m not in won]
        tail = f" (no significant difference on {labels(rest)})" if rest else ""
        return "as-expected", (f"As expected: {won[agree[0]]} ahead on {labels(agree)}{tail}.")
    return "open", (f"Not confirmed: no significant difference on {labels(focus)} with the "
                    "requests measured; see the intervals below.")


def _cores(run: RunData) -> str:
    plan = run.spec.get("cpu_plan") or {}
    if not plan:
        return "Cores: not pinned."
    bits = []
    for d in plan.get("deployments") or []:
        if isinstance(d, dict):
            roles = d.get("roles") or {}
            where = ", ".join(f"{role} on {','.join(map(str, cpus))}" for role, cpus in roles.items())
            bits.append(f"{d.get('name')}: {where or 'CPUs ' + str(d.get('cpus'))}")
    shares = plan.get("client_shares_cores")
    return ("Cores: " + "; ".join(bits) + ". "
            + ("The client shares these cores (no spare core on this machine); its own CPU use "
               "is in the telemetry section." if shares else "The client has cores of its own."))


def render_scenarios(out: str | Path, dirs: Sequence[str | Path]) -> Path:
    """Write `<out>/report.html`, the index of the scenario results dirs; returns its path."""
    out = Path(out)
    parts = []
    for d in dirs:
        d = Path(d)
        run = load_run(d)
        sc = run.spec.get("scenario") or {}
        findings = verdict_for_run(run, lp_labels={lp: run.load_point_label(lp)
                                                   for lp in run.load_points})
        css, sentence = outcome(run, findings)
        e = html.escape
        items = "".join(f"<li>{e(f.text)}</li>" for f in findings)
        try:
            link = d.resolve().relative_to(out.resolve()) / "report.html"
        except ValueError:
            link = d.resolve() / "report.html"
        parts.append(
            f"<section id=\"{e(d.name)}\"><h2>{e(sc.get('title') or d.name)}</h2>"
            f"<p>Expected: {e(sc.get('expectation') or '-')}.</p>"
            f"<p class=\"outcome {css}\">{e(sentence)}</p><ul>{items}</ul>"
            f"<p class=\"note\">{e(_cores(run))} Why: the scenario report's sections “Where the "
            "time to first token goes” (queue, prefill, KV transfer, admission) and “Decode "
            "interference from co-batched prefill” (ITL of tokens from steps that also ran a "
            f"prefill).</p><p><a href=\"{e(str(link))}\">full report: {e(d.name)}</a></p>"
            "</section>")
    path = out / "report.html"
    path.write_text(_PAGE.format(sections="\n".join(parts)), encoding="utf-8")
    return path
