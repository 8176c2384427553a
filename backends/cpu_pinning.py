"""Fair cores on a CPU host: which cores each deployment, each of its roles, and the client get.

Role in the data flow: before a run the runner calls `plan_for_run(deployment specs)` (reads
the CPUs this process may use and the SMT topology, then `plan_cores`, which is pure) and gets a
`CorePlan` (`to_dict()` is JSON, for spec.json / env.json). Each deployment is launched with its
share, `make_deployment(spec, log_dir, cores=plan.for_deployment(name))`: backends/launch.py passes
`DeploymentCores.env()` to the engine server, which pins itself and its disagg workers
(backends/engine/cpu_affinity.py reads the variables), pins the server's pid as soon as it is
spawned, and reads back every process's affinity (`observed_affinity`) once it is healthy. The
runner, which is the load generator's client, pins itself with `pin_client(plan)`. What the
client and idle deployments then used is measured from telemetry (workloads/bystander_cpu.py).

The plan ("per chip" made true on CPU, where a chip is a core):

1. CPUs are taken in an order that puts one logical CPU of every physical core before any SMT
   sibling, so that N cores are N physical cores while there are enough.
2. A CPU engine deployment gets `chips()` cores (its total threads). Mono: the server process
   (engine and HTTP front end) floats over all of them. Disaggregated, T threads over P + D
   workers: each worker has T // (P + D) cores of its own, prefill workers first, then decode
   (1P1D with 2 threads: prefill on the first core, decode on the second). The router floats
   over all of the deployment's cores, as mono's HTTP front end does over mono's: its CPU is
   charged to the deployment, never to the client's cores or to cores nobody counts.
3. Deployments are alternatives measured in turn (or interleaved, so several may be alive at
   once). Each gets cores of its own when all of them and the client fit; otherwise all of them
   start from the first core and overlap (`deployments_share_cores`: an idle deployment then sits
   on the cores of the one under load; how much it took is measured, not assumed).
4. The client gets `client_processes` cores after the deployments' when there are spare ones.
   When there are none (2 cores: mono takes both, 1P1D one each) it floats over every allowed
   CPU, `client_shares_cores` is True, and the report must say so and how much CPU it took.
5. A deployment that needs more cores than there are gets them all; threads then outnumber
   cores (`oversubscribed`), and its workers split the cores as evenly as they can.
6. Not pinned, and said why: URL deployments (not launched here), engines on a GPU (their chips
   are GPUs), and platforms without os.sched_setaffinity (the plan is still recorded, with
   `pinning` False; nothing is pinned and the run carries on).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping

# The engine reads these (backends/engine/cpu_affinity.py); the launcher writes them.
ENV_SELF = "INFER_BENCH_CPUS"
ENV_PREFILL = "INFER_BENCH_CPUS_PREFILL"
ENV_DECODE = "INFER_BENCH_CPUS_DECODE"


def format_cpu_list(cpus: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (the Linux cpulist syntax)."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


@dataclass(frozen=True)
class CoreNeed:
    """What one deployment asks for: `cores` (its chips on CPU) for `threads` torch threads."""

    name: str
    mode: str = "mono"          # mono | disagg
    cores: int = 1
    threads: int = 1
    prefill_workers: int = 1
    decode_workers: int = 1
    pinnable: bool = True
    local: bool = True          # runs on this host (an engine we launch)
    why_not: str = ""           # why it is not pinned

    @classmethod
    def from_spec(cls, spec) -> "CoreNeed":
        """From a backends.launch EngineDeploymentSpec / ExternalDeploymentSpec (duck-typed)."""
        name = str(getattr(spec, "name", ""))
        if getattr(spec, "kind", "engine") != "engine":
            return cls(name, mode="external", cores=0, threads=0, pinnable=False, local=False,
                       why_not="external server: not launched here")
        mode = str(getattr(spec, "mode", "mono"))
        threads = int(getattr(spec, "num_threads", 1) or 1)
        chips = int(spec.chips()) if hasattr(spec, "chips") else threads
        device = str(getattr(spec, "device", "cpu"))
        if device != "cpu":
            return cls(name, mode=mode, cores=0, threads=threads, pinnable=False,
                       why_not=f"device {device}: its chips are GPUs, CPU cores are not planned")
        return cls(name, mode=mode, cores=chips, threads=threads,
                   prefill_workers=int(getattr(spec, "prefill_workers", 1)),
                   decode_workers=int(getattr(spec, "decode_workers", 1)))


@dataclass
class DeploymentCores:
    """One deployment's share. `roles`: mono {"server"}; disagg {"router", "prefill", "decode"}
    (a role's union over its workers); `workers`: disagg {"prefill-0": [...], "decode-0": ...}
    in the router's worker names."""

    name: str
    mode: str
    pinned: bool
    cpus: list[int] = field(default_factory=list)
    roles: dict[str, list[int]] = field(default_factory=dict)
    workers: dict[str, list[int]] = field(default_factory=dict)
    threads: int = 0
    oversubscribed: bool = False
    note: str = ""

    def server_cpus(self) -> list[int]:
        """The CPUs of the launched server process (mono engine or disagg router)."""
        return self.roles.get("server") or self.roles.get("router") or self.cpus

    def to_dict(self) -> dict:
        return asdict(self)

    def env(self) -> dict[str, str]:
        """Environment variables for the engine server process ({} when not pinned)."""
        if not self.pinned or not self.cpus:
            return {}
        env = {ENV_SELF: format_cpu_list(self.server_cpus())}
        for role, var in (("prefill", ENV_PREFILL), ("decode", ENV_DECODE)):
            sets = [format_cpu_list(c) for w, c in sorted(
                self.workers.items(), key=lambda kv: int(kv[0].rsplit("-", 1)[1]))
                if w.startswith(role + "-")]
            if sets:
                env[var] = ";".join(sets)
        return env


@dataclass
class CorePlan:
    """Cores for every deployment and for the client; `to_dict()` is JSON."""

    allowed: list[int]
    pinning: bool                       # False: this platform cannot pin; nothing is pinned
    deployments: list[DeploymentCores]
    client: list[int]                   # the client's CPUs (all allowed ones when it shares)
    client_processes: int = 1
    client_shares_cores: bool = False
    deployments_share_cores: bool = False
    reason: str = ""                    # why pinning is False
    notes: list[str] = field(default_factory=list)

    def for_deployment(self, name: str) -> DeploymentCores | None:
        return next((d for d in self.deployments if d.name == name), None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "CorePlan":
        d = dict(d)
        d["deployments"] = [DeploymentCores(**x) for x in d.get("deployments", [])]
        return cls(**d)


# ---------------------------------------------------------------------------- planning (pure)

def order_cpus(cpus: Iterable[int], topology: Mapping[int, object] | None = None) -> list[int]:
    """Allowed CPUs, one logical CPU per physical core first, then the SMT siblings.

    `topology` maps a CPU to its physical core's key (e.g. (package, core_id)); CPUs missing
    from it count as cores of their own. Within a round, physical cores go by lowest CPU id."""
    cpus = sorted(set(cpus))
    if not topology:
        return cpus
    by_core: dict[object, list[int]] = {}
    for c in cpus:
        by_core.setdefault(topology.get(c, ("cpu", c)), []).append(c)
    groups = sorted(by_core.values(), key=lambda g: g[0])
    out: list[int] = []
    for rnd in range(max(len(g) for g in groups)):
        out += [g[rnd] for g in groups if rnd < len(g)]
    return out


def split_workers(cpus: list[int], n_workers: int, per_worker: int) -> list[list[int]]:
    """Each worker's CPUs: `per_worker` of its own when they fit; else the CPUs in even
    contiguous chunks; with more workers than CPUs, one CPU each, round robin."""
    m = len(cpus)
    if n_workers * per_worker <= m:
        return [cpus[i * per_worker:(i + 1) * per_worker] for i in range(n_workers)]
    if n_workers <= m:
        q, r = divmod(m, n_workers)
        out, start = [], 0
        for i in range(n_workers):
            size = q + (1 if i < r else 0)
            out.append(cpus[start:start + size])
            start += size
        return out
    return [[cpus[i % m]] for i in range(n_workers)]


def _deployment_cores(need: CoreNeed, cpus: list[int]) -> DeploymentCores:
    d = DeploymentCores(need.name, need.mode, True, sorted(cpus), threads=need.threads,
                        oversubscribed=need.threads > len(cpus))
    if need.mode != "disagg":
        d.roles = {"server": sorted(cpus)}
    else:
        n_p, n_d = need.prefill_workers, need.decode_workers
        per = max(1, need.threads // (n_p + n_d))   # = the router's threads_per_worker()
        parts = split_workers(list(cpus), n_p + n_d, per)
        names = [f"prefill-{i}" for i in range(n_p)] + [f"decode-{i}" for i in range(n_d)]
        d.workers = {n: sorted(c) for n, c in zip(names, parts)}
        d.roles = {"router": sorted(cpus),
                   "prefill": sorted({c for n, p in zip(names, parts) if n[0] == "p" for c in p}),
                   "decode": sorted({c for n, p in zip(names, parts) if n[0] == "d" for c in p})}
    if d.oversubscribed:
        d.note = f"{need.threads} threads on {len(cpus)} core(s): oversubscribed"
    return d


def plan_cores(needs: list[CoreNeed], allowed: Iterable[int], client_processes: int = 1,
               topology: Mapping[int, object] | None = None, pinning: bool = True,
               reason: str = "") -> CorePlan:
    """The plan of the module docstring for these deployments on the `allowed` CPUs.

    `client_processes`: the load generator's processes (`run --workers N`), one core each when
    spare. `topology`: CPU -> physical core key (see order_cpus). `pinning` False (no
    sched_setaffinity): the same plan is recorded with every deployment unpinned."""
    order = order_cpus(allowed, topology)
    if not order:
        raise ValueError("no CPU allowed")
    n = len(order)
    want_client = max(1, int(client_processes))
    pinned = [nd for nd in needs if nd.pinnable and nd.cores > 0]
    notes: list[str] = []
    total = sum(min(nd.cores, n) for nd in pinned)
    isolated = total + want_client <= n
    shares: dict[str, list[int]] = {}
    start = 0
    for nd in pinned:
        size = min(nd.cores, n)
        if isolated:
            shares[nd.name] = order[start:start + size]
            start += size
        else:
            shares[nd.name] = order[:size]
    used = {c for cs in shares.values() for c in cs}
    spare = [c for c in order if c not in used]
    if spare:
        client = spare[:want_client]
        client_shares = False
        if len(client) < want_client:
            notes.append(f"the client has {len(client)} core(s) of its own for {want_client} "
                         f"processes")
    else:
        client = list(order)
        client_shares = bool(pinned)
        if pinned:
            notes.append(f"no spare core for the client: it shares all {n} with the deployments "
                         f"({', '.join(nd.name for nd in pinned)}); its CPU use is measured")
    deployments: list[DeploymentCores] = []
    for nd in needs:
        if nd.name in shares:
            d = _deployment_cores(nd, shares[nd.name])
            d.pinned = pinning
            deployments.append(d)
        else:
            why = nd.why_not or "needs no cores"
            deployments.append(DeploymentCores(nd.name, nd.mode, False, threads=nd.threads,
                                               note=why))
            if nd.local:  # floats over every CPU: the client's too
                client_shares = True
                notes.append(f"{nd.name} is not pinned ({why}): it may run on any core, the "
                             f"client's included")
    names = list(shares)
    overlap = any(set(shares[a]) & set(shares[b])
                  for i, a in enumerate(names) for b in names[i + 1:])
    if overlap:
        notes.append("deployments share cores: an idle one sits on the cores of the one under "
                     "load (see the measured bystander CPU)")
    if topology and not client_shares:
        key = {c: topology.get(c, ("cpu", c)) for c in order}
        for name, cs in shares.items():
            sib = sorted(c for c in client if any(key[c] == key[x] for x in cs))
            if sib:
                notes.append(f"client CPU(s) {format_cpu_list(sib)} are SMT siblings of "
                             f"{name}'s cores")
    if not pinning:
        client_shares = any(nd.local for nd in needs)
        notes.append(f"not pinned: {reason or 'this platform cannot set CPU affinity'}")
    return CorePlan(allowed=sorted(order), pinning=pinning, deployments=deployments,
                    client=sorted(client), client_processes=want_client,
                    client_shares_cores=client_shares, deployments_share_cores=overlap,
                    reason=reason if not pinning else "", notes=notes)


# ---------------------------------------------------------------------------- the host (side effects)

def pinning_support() -> tuple[bool, str]:
    """(can this platform pin, why not)."""
    if hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity"):
        return True, ""
    return False, "os.sched_setaffinity is not available on this platform"


def allowed_cpus() -> list[int]:
    """The CPUs this process may use (its affinity), else 0 .. cpu_count-1."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def read_topology(cpus: Iterable[int], root: str = "/sys/devices/system/cpu") -> dict[int, tuple]:
    """CPU -> (package id, core id) from sysfs; CPUs it cannot read are left out."""
    out: dict[int, tuple] = {}
    for c in cpus:
        try:
            with open(f"{root}/cpu{c}/topology/physical_package_id") as f:
                pkg = int(f.read())
            with open(f"{root}/cpu{c}/topology/core_id") as f:
                core = int(f.read())
        except (OSError, ValueError):
            continue
        out[c] = (pkg, core)
    return out


def plan_for_run(specs: Iterable, client_processes: int = 1) -> CorePlan:
    """The plan for a run's deployment specs on this host."""
    ok, why = pinning_support()
    allowed = allowed_cpus()
    return plan_cores([CoreNeed.from_spec(s) for s in specs], allowed, client_processes,
                      topology=read_topology(allowed), pinning=ok, reason=why)


def pin_threads(cpus: Iterable[int], pid: int = 0) -> bool:
    """Set the affinity of every thread of process `pid` (0: this one): `sched_setaffinity(pid)`
    alone changes one thread. False where the platform cannot pin; OSError for refused CPUs."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    cpus = set(cpus)
    target = os.getpid() if pid == 0 else pid
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{target}/task")]
    except OSError:
        tids = []
    os.sched_setaffinity(target, cpus)
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            pass
    return True


def pin_client(plan: CorePlan) -> dict:
    """Pin this process (the load generator's client; processes it starts later inherit it) to
    the plan's client CPUs. Returns what to record: cpus, pinned, shares_cores, reason."""
    rec = {"cpus": list(plan.client), "pinned": False, "shares_cores": plan.client_shares_cores,
           "reason": ""}
    if not plan.pinning:
        rec["reason"] = plan.reason or "pinning not supported"
        return rec
    try:
        rec["pinned"] = pin_threads(plan.client)
    except OSError as e:
        rec["reason"] = f"sched_setaffinity refused: {e}"
    return rec


def observed_affinity(pids: Iterable[int]) -> dict[int, list[int]]:
    """{pid: CPUs its main thread may run on} for the pids that still exist ({} off Linux)."""
    out: dict[int, list[int]] = {}
    if not hasattr(os, "sched_getaffinity"):
        return out
    for pid in pids:
        try:
            out[int(pid)] = sorted(os.sched_getaffinity(int(pid)))
        except OSError:
            continue
    return out


def thread_affinities(pid: int) -> dict[int, list[int]]:
    """{thread id: CPUs} for every thread of `pid` (Linux; {} elsewhere or when it is gone)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    return observed_affinity(tids)
