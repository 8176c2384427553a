"""CPU pinning inside the engine's own processes: honour the core sets the launcher asks for.

Role in the data flow: the launcher (backends/launch.py, planned by backends/cpu_pinning.py)
gives each process of a deployment the cores its chips count, through the environment:

    INFER_BENCH_CPUS           this process: the mono engine server, or the disagg router
    INFER_BENCH_CPUS_PREFILL   the prefill workers of a disaggregated deployment
    INFER_BENCH_CPUS_DECODE    the decode workers

A value is a CPU list ("0,1", "4-7,12"); a worker variable may hold one list per worker,
separated by ";" ("0;1": worker 0 on CPU 0, worker 1 on CPU 1; worker i takes list i modulo the
number of lists). `http/serve.py` pins itself first thing (`pin_from_env`); `disagg/router.py`
gives each worker process its own list (`worker_cpus`): as the worker's INFER_BENCH_CPUS and, at
once after the spawn, by `sched_setaffinity` on its pid; the worker pins itself (every thread)
from INFER_BENCH_CPUS when it starts. Threads started later (torch's OpenMP team, the engine
thread) inherit the affinity. Without these variables nothing changes: processes inherit their
parent's affinity as before. Linux only (os.sched_setaffinity); elsewhere nothing is pinned.

This module imports nothing from outside backends/engine (the launcher writes the variables).
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

ENV_SELF = "INFER_BENCH_CPUS"
ENV_ROLE = {"prefill": "INFER_BENCH_CPUS_PREFILL", "decode": "INFER_BENCH_CPUS_DECODE"}


def parse_cpu_list(text: str) -> list[int]:
    """"0,2-3" -> [0, 2, 3] (sorted, unique). ValueError on anything else (or an empty list)."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise ValueError(f"bad CPU list {text!r}")
        a = int(lo)
        b = int(hi) if sep else a
        if b < a:
            raise ValueError(f"bad CPU range {part!r} in {text!r}")
        cpus.update(range(a, b + 1))
    if not cpus:
        raise ValueError(f"empty CPU list {text!r}")
    return sorted(cpus)


def parse_cpu_sets(text: str) -> list[list[int]]:
    """"0;1" -> [[0], [1]]: one CPU list per worker."""
    return [parse_cpu_list(p) for p in text.split(";") if p.strip()]


def worker_cpus(role: str, index: int, environ: Mapping[str, str] | None = None) -> list[int] | None:
    """The CPUs of worker `index` of `role` ("prefill" | "decode"), or None when not asked for."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_ROLE.get(role, ""), "").strip()
    if not text:
        return None
    sets = parse_cpu_sets(text)
    return sets[index % len(sets)] if sets else None


def pin_threads(cpus: list[int], pid: int = 0) -> bool:
    """Set the affinity of every thread of process `pid` (0: this one); True when done.

    `sched_setaffinity(pid)` alone changes one thread, so threads that already exist (an imported
    torch's pool) are each pinned through /proc/PID/task. Raises OSError when the CPUs are not
    allowed; returns False where the platform cannot pin."""
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


def pin_from_env(environ: Mapping[str, str] | None = None) -> list[int] | None:
    """Pin this process to $INFER_BENCH_CPUS; returns the CPUs, or None when not asked or not
    possible (a bad value or a refused set is reported on stderr, and the process runs unpinned:
    the launcher reads back every process's affinity and records what it found)."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_SELF, "").strip()
    if not text:
        return None
    try:
        cpus = parse_cpu_list(text)
        return cpus if pin_threads(cpus) else None
    except (ValueError, OSError) as e:
        print(f"infer-bench engine: not pinned to ${ENV_SELF}={text!r}: {e}", file=sys.stderr,
              flush=True)
        return None
