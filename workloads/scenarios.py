"""The default run's scenarios: workloads where physics expects different winners.

Role in the data flow: `infer-bench run` with no workload flags runs every scenario here as its
own results dir (`<out>/<scenario>/`, each with its own report), then renders one index report
that states, per scenario, who won on what and why (reports/scenarios.py). Each scenario names the
outcome the design argument expects; the verdict reports what was measured, agreeing or not.

- `chat`: short prompts, short answers, a loose TTFT SLO. A monolithic engine on all the cores
  prefills a short prompt faster than a prefill worker on half of them, and a 128-token prefill
  barely disturbs running decodes, so mono is expected ahead on TTFT and on goodput per chip.
- `long-prompt`: 1024-token prompts with a tight TPOT SLO. On a monolithic engine every new
  prompt's prefill runs in the same steps as the running decodes (chunked prefill), so their next
  tokens wait for it: the ITL/TPOT tails jump by a prefill's length. Disaggregation moves the
  prefill to its own worker, so the decode side keeps its pace: disaggregated is expected ahead on
  TPOT and ITL tails (DistServe's interference argument), at the price of TTFT.

Sizing (2-core CPU, SmolLM2-135M, fp32): a 1024-token prefill takes ~2 s on 2 threads and ~4 s on
one; a decode step ~30-40 ms. The long-prompt rate puts a new prompt into most requests' decode
phase on mono, without queueing prefills behind each other on the disaggregated side's single
prefill worker. Requests per point are what the 8-minute budget allows; the verdict's intervals
say how much that buys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .spec import SLO, ArrivalSpec, LengthDist, LoadPoint, WorkloadSpec


@dataclass
class Scenario:
    name: str
    title: str
    expectation: str                       # what the design argument expects, in one sentence
    workload: WorkloadSpec
    slo: SLO
    load_points: list[LoadPoint] = field(default_factory=list)
    focus: tuple[str, ...] = ()            # the verdict figures the expectation is about
    expected_mode: str = ""                # the deployment mode expected ahead on them

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "expectation": self.expectation,
                "focus": list(self.focus), "expected_mode": self.expected_mode}


def _poisson(rate: float, seed: int) -> LoadPoint:
    return LoadPoint(name=f"{rate:.3g}rps", arrival=ArrivalSpec(kind="poisson", rate=rate, seed=seed))


def default_scenarios(seed: int = 0) -> list[Scenario]:
    """The two scenarios of a default `infer-bench run`."""
    chat = Scenario(
        name="chat", title="Short chat-like prompts",
        expectation=("mono expected ahead on TTFT and goodput per chip: short prefills run faster "
                     "on all cores and barely interfere with decoding"),
        workload=WorkloadSpec(input_len=LengthDist.fixed(128), output_len=LengthDist.fixed(32),
                              num_requests=24, seed=seed),
        slo=SLO(ttft_s=1.0, tpot_s=0.2),
        load_points=[_poisson(1.0, seed), _poisson(1.5, seed)],
        focus=("ttft_p50_s", "ttft_p90_s"), expected_mode="mono")
    long_prompt = Scenario(
        name="long-prompt", title="Long prompts, tight TPOT SLO",
        expectation=("disaggregated expected ahead on TPOT and ITL tails: on mono every new "
                     "prompt's prefill stalls the running decodes"),
        workload=WorkloadSpec(input_len=LengthDist.fixed(1024), output_len=LengthDist.fixed(32),
                              num_requests=10, seed=seed + 1),
        slo=SLO(ttft_s=10.0, tpot_s=0.08),
        load_points=[_poisson(0.15, seed + 1)],
        focus=("itl_p99_s", "tpot_p90_s"), expected_mode="disagg")
    return [chat, long_prompt]


def estimate_seconds(scenarios: list[Scenario], n_deployments: int, repeats: int = 1,
                     startup_s: float = 45.0, drain_s: float = 5.0) -> float:
    """A rough wall-time estimate printed before a run starts: per deployment and scenario, the
    start-up and warm-up (~45 s measured on the 2-core box), then each load point's send span plus
    a drain."""
    total = 0.0
    for sc in scenarios:
        per_dep = startup_s
        for lp in sc.load_points:
            rate = lp.arrival.rate
            n = sc.workload.num_requests
            per_dep += ((n / rate if rate else n * 2.0) + drain_s) * max(1, repeats)
        total += per_dep * n_deployments
    return total
