"""Client shards on a Ray cluster: one load point's send schedule split over N Ray actors spread
over the cluster's nodes, for more load than one host can send and time precisely.

Role in the data flow: the runner (workloads/runner.py), given `RunSpec.ray_address`, calls
`run_ray_sharded(address, url, endpoint, requests, arrival, workers, ...)` where it would call
`multiproc.run_sharded`, and gets the same merged LoadResult, plus what each shard was in
`extra["shards"]` (node, clock offset and its uncertainty, health, status), which the runner
writes to run.json (`client_shards`). This is the only module that imports Ray, and only when
called (`import_ray`): without Ray installed, `RayUnavailable` says
`pip install 'infer-bench[ray]'`. Every node must have infer-bench (same version) installed.

How, per load point:
1. Split: `shards.plan_shards`, the same split as the process shards (chains w, w+N, ... with
   their precomputed send times).
2. Place: a placement group of N bundles of `cpus_per_shard` CPUs, strategy SPREAD (Ray puts
   the bundles on as many different nodes as it can), one `ShardActor` per bundle. The actor is
   threaded: its load runs in a thread with its own event loop, so `clock_ns`, `poll` and `stop`
   answer while it runs.
3. Clock: for each shard, `clock_round_trips` calls of the actor's `clock_ns` (its
   `time.perf_counter_ns()`); `measure_clock_offset` keeps the round trip with the smallest RTT
   and takes offset = t_actor - (t_send + t_recv) / 2, exact to within +-RTT/2 whatever the
   asymmetry of the two legs (docs/design.md, "Clock offsets of Ray shards"). The shard's run
   clock origin is the driver's origin plus that offset, so every time it records is on the
   driver's run clock to within the uncertainty. Measured again after the load point: the
   difference is the clocks' drift over it (both are in run.json).
4. Start: one agreed instant, `start_delay_s` ahead on the driver's run clock (long enough for
   the start call to reach every actor); each shard's LoadGenerator sleeps until it on its own
   clock and times its own requests (the kernel-timestamp client where the node has it).
5. Stream: every `poll_interval_s` the driver asks each shard for the records completed since
   its last answer and hands them to `on_record` (the runner appends them to the results dir as
   they come), so a shard that dies loses at most one poll interval of records.
6. Death: a shard whose actor (or node) dies, or whose load fails: its records received so far
   are kept, it is listed in `extra["shard_failures"]` (the runner marks the run incomplete),
   the other shards finish.
7. Merge: `shards.merge_shards` (records tagged `client_shard`, `client_node`; pooled and
   per-shard ClientHealth).
Ctrl-C: every shard is told to stop; what completed is collected; `extra["interrupted"]`.

`LocalRayCluster` starts a small cluster of several Ray nodes on this host (`ray start` with
its own temp dir per node, each in a process group of its own) and stops exactly those
processes: for the tests and bench/ray_shards.py, never `ray stop` (which stops every Ray
process of the host).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from infer_bench.backends.client.aioloop import run as run_loop
from infer_bench.backends.client.openai import PreparedRequest, RunClock

from .loadgen import LoadResult
from .records import RequestRecord
from .shards import make_shard_generator, merge_shards, plan_shards, shard_result
from .spec import ArrivalSpec

__all__ = ["RAY_MISSING", "RayUnavailable", "RayShardError", "import_ray", "connect", "disconnect",
           "ClockOffset", "measure_clock_offset", "ShardActor", "run_ray_sharded",
           "LocalRayCluster"]

RAY_MISSING = "--ray needs Ray, which is not installed: pip install 'infer-bench[ray]'"


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says so in one line."""


class RayShardError(RuntimeError):
    """The cluster could not place or start the client shards; the message says why."""


def import_ray():
    """The `ray` module, or RayUnavailable naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(RAY_MISSING) from None
    return ray


def connect(address: str) -> dict:
    """Connect this process to the Ray cluster at `address` ("auto": the one started on this
    host; "HOST:PORT": its head's GCS; "ray://HOST:10001": Ray Client), once; returns the
    cluster's alive nodes and CPUs. RayUnavailable when Ray is missing or the cluster is not
    there."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, namespace="infer-bench", ignore_reinit_error=True,
                     log_to_driver=False, logging_level="ERROR")
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RayUnavailable(f"cannot connect to the Ray cluster at {address!r}: {msg}") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"address": address, "nodes": len(nodes),
            "cpus": sum(float(n.get("Resources", {}).get("CPU", 0)) for n in nodes)}


def disconnect() -> None:
    """Disconnect from Ray if connected (the cluster goes on running)."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


# ---------------------------------------------------------------------------- clock offsets

@dataclass
class ClockOffset:
    """A remote clock's offset from the local one: remote = local + offset_ns, to within
    +-uncertainty_ns (half the round trip it was measured over)."""

    offset_ns: int
    uncertainty_ns: int
    rtt_ns: int
    round_trips: int

    def to_dict(self) -> dict:
        return {"offset_s": self.offset_ns / 1e9, "uncertainty_s": self.uncertainty_ns / 1e9,
                "rtt_s": self.rtt_ns / 1e9, "round_trips": self.round_trips}


def measure_clock_offset(remote_ns: Callable[[], int], round_trips: int = 8,
                         local_ns: Callable[[], int] = time.perf_counter_ns) -> ClockOffset:
    """NTP-style: `round_trips` times, t0 = local clock, t1 = remote clock (`remote_ns()`, read
    somewhere between the call's send and its return), t3 = local clock. The remote reading
    was taken at a local instant in [t0, t3], so offset = t1 - (t0 + t3) / 2 is off by at most
    (t3 - t0) / 2, however unequal the two legs. The round trip with the smallest RTT gives the
    tightest bound and is the one kept."""
    best: tuple[int, int] | None = None
    n = max(1, int(round_trips))
    for _ in range(n):
        t0 = local_ns()
        t1 = int(remote_ns())
        t3 = local_ns()
        rtt = t3 - t0
        if best is None or rtt < best[0]:
            best = (rtt, t1 - (t0 + t3) // 2)
    rtt, off = best
    return ClockOffset(offset_ns=off, uncertainty_ns=(rtt + 1) // 2, rtt_ns=rtt, round_trips=n)


# ---------------------------------------------------------------------------- the actor

class ShardActor:
    """One client shard (run as a threaded Ray actor): `prepare` the shard's LoadGenerator
    options, `start` its load in a thread at the agreed instant, answer `poll` with the records
    completed since the last poll (and the shard's result once done), `stop` on request."""

    def __init__(self, shard: int):
        self.shard = shard
        self.node_id = ""
        try:
            import ray
            self.node_id = ray.get_runtime_context().get_node_id() or ""
            self.node_ip = ray.util.get_node_ip_address()
        except Exception:  # noqa: BLE001 - outside Ray (tests): no node
            self.node_ip = ""
        self.kw: dict | None = None
        self.records: list[dict] = []
        self.sent = 0
        self.done = False
        self.result: dict | None = None
        self.error: str | None = None
        self.stopping = False
        self.gen = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def info(self) -> dict:
        return {"shard": self.shard, "node_id": self.node_id, "node_ip": self.node_ip,
                "hostname": socket.gethostname(), "pid": os.getpid()}

    def clock_ns(self) -> int:
        return time.perf_counter_ns()

    def prepare(self, kw: dict) -> bool:
        """Keep the shard's options; load its tokenizer now (not at the start instant)."""
        kw = dict(kw)
        if kw.get("tokenizer_path"):
            from .prompt_text import load_tokenizer_for
            kw["tokenize"] = load_tokenizer_for(kw.pop("tokenizer_path")).tokenize
        self.kw = kw
        return True

    def start(self, t0_ns: int, start_at_s: float) -> bool:
        """Run the load in a thread; t=0 of its run clock is `t0_ns` on this host's
        perf_counter (the driver's origin plus the measured offset)."""
        threading.Thread(target=self._run, args=(t0_ns, start_at_s), daemon=True,
                         name=f"infer-bench-shard-{self.shard}").start()
        return True

    def _run(self, t0_ns: int, start_at_s: float) -> None:
        node = self.node_id[:12] or None

        def on_record(rec: RequestRecord) -> None:
            rec.client_shard, rec.client_node = self.shard, node
            self.records.append(rec.to_dict())

        async def main() -> LoadResult:
            self.loop = asyncio.get_running_loop()
            self.gen = gen
            if self.stopping:
                gen.stop()
            return await gen.run()

        try:
            gen = make_shard_generator(self.kw or {}, RunClock(t0_ns), start_at_s, on_record)
            cpu0 = time.process_time()
            res = run_loop(main())
            self.result = shard_result(res, time.process_time() - cpu0, records=False)
        except BaseException as e:  # noqa: BLE001 - reported to the driver
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.done = True

    def poll(self) -> dict:
        """Records completed since the last poll; `done` (with `result` or `error`) once the
        load has finished and every record was handed over."""
        done = self.done               # read first: once True, every record is appended
        n = len(self.records)
        new, self.sent = self.records[self.sent:n], n
        return {"records": new, "done": done, "result": self.result if done else None,
                "error": self.error if done else None}

    def stop(self) -> bool:
        """Stop sending (in-flight requests are cancelled); the load returns what completed."""
        self.stopping = True
        if self.loop is not None and self.gen is not None:
            self.loop.call_soon_threadsafe(self.gen.stop)
        return True


_ACTOR = None


def _actor_class(ray):
    global _ACTOR
    if _ACTOR is None:
        _ACTOR = ray.remote(ShardActor)
    return _ACTOR


# ---------------------------------------------------------------------------- the driver

def run_ray_sharded(
    address: str,
    url: str,
    endpoint: str,
    requests: Sequence[PreparedRequest],
    send_times: Sequence[float] | ArrivalSpec | None,
    workers: int,
    *,
    concurrency: int | None = None,
    clock: RunClock | None = None,
    deployment: str = "",
    load_point: str = "",
    model: str | None = None,
    headers: dict[str, str] | None = None,
    api_key: str | None = None,
    timeout_s: float | None = 600.0,
    tokenize: Callable[[str], list[int]] | None = None,
    tokenizer_path: str | None = None,
    lateness_threshold_s: float = 0.01,
    loop_lag_threshold_s: float = 0.01,
    start_delay_s: float = 1.0,
    on_record: Callable[[RequestRecord], None] | None = None,
    ready_timeout_s: float = 120.0,
    poll_interval_s: float = 0.25,
    clock_round_trips: int = 8,
    cpus_per_shard: float = 1.0,
) -> LoadResult:
    """Drive `requests` over `workers` Ray actors of the cluster at `address` (see the module
    docstring); returns one merged LoadResult on `clock` (a new RunClock when None).
    `tokenize` travels to the nodes pickled; `tokenizer_path` is loaded on each node (it must
    exist there). RayShardError when the cluster cannot place or start the shards."""
    ray = import_ray()
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    connect(address)
    clock = clock or RunClock()
    shards = plan_shards(requests, send_times, workers, concurrency)
    common = dict(url=url, endpoint=endpoint, deployment=deployment, load_point=load_point,
                  model=model, headers=headers, api_key=api_key, timeout_s=timeout_s,
                  tokenize=tokenize, tokenizer_path=tokenizer_path,
                  lateness_threshold_s=lateness_threshold_s,
                  loop_lag_threshold_s=loop_lag_threshold_s)
    n = len(shards)
    pg = placement_group([{"CPU": cpus_per_shard}] * n, strategy="SPREAD")
    actors: list = []
    try:
        ready, _ = ray.wait([pg.ready()], timeout=ready_timeout_s)
        if not ready:
            raise RayShardError(f"the Ray cluster could not place {n} client shards of "
                               f"{cpus_per_shard:g} CPU each within {ready_timeout_s:g} s "
                               "(`ray status` shows its free CPUs)")
        tag = uuid.uuid4().hex[:8]
        actor_cls = _actor_class(ray)
        for w in range(n):
            actors.append(actor_cls.options(
                num_cpus=cpus_per_shard, max_concurrency=4, max_restarts=0,
                name=f"infer-bench-shard-{tag}-{w}",
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=w),
            ).remote(w))
        try:
            infos = ray.get([a.info.remote() for a in actors], timeout=ready_timeout_s)
            ray.get([a.prepare.remote({**common, **s}) for a, s in zip(actors, shards)],
                    timeout=ready_timeout_s)
        except Exception as e:  # noqa: BLE001 - GetTimeoutError, RayActorError, pickling
            raise RayShardError(_one_line(f"the client shards did not start on the Ray cluster: "
                                          f"{type(e).__name__}: {e}")) from e
        offsets = [measure_clock_offset(lambda a=a: ray.get(a.clock_ns.remote()),
                                        clock_round_trips) for a in actors]
        start_at_s = clock.now() + start_delay_s
        ray.get([a.start.remote(clock.t0_ns + o.offset_ns, start_at_s)
                 for a, o in zip(actors, offsets)], timeout=ready_timeout_s)
        streamed, finals, failures, interrupted = _stream(ray, actors, on_record,
                                                          poll_interval_s)
        after: dict[int, ClockOffset] = {}
        for w, a in enumerate(actors):
            if w not in failures:
                try:
                    after[w] = measure_clock_offset(lambda a=a: ray.get(a.clock_ns.remote(),
                                                                        timeout=30),
                                                    clock_round_trips)
                except Exception:  # noqa: BLE001 - only a measurement
                    pass
    finally:
        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001
                pass
        try:
            remove_placement_group(pg)
        except Exception:  # noqa: BLE001
            pass
    results = []
    for w in range(n):
        res = finals.get(w) or _partial_result(streamed[w], start_at_s)
        res["records"] = streamed[w]
        results.append(res)
    merged = merge_shards(results, start_at_s, interrupted, lateness_threshold_s,
                          loop_lag_threshold_s)
    merged.extra["shards"] = [
        _shard_info(w, infos[w], shards[w], streamed[w], offsets[w], after.get(w),
                    merged.extra["shard_health"][w], failures.get(w))
        for w in range(n)]
    merged.extra["shard_failures"] = {str(w): msg for w, msg in failures.items()}
    merged.extra["ray_address"] = address
    merged.extra["nodes"] = len({i["node_id"] for i in infos})
    return merged


def _stream(ray, actors: list, on_record, poll_interval_s: float):
    """Poll every shard until each is done or gone. Returns (records per shard, final result
    per finished shard, {shard: why it failed}, interrupted)."""
    streamed: list[list[RequestRecord]] = [[] for _ in actors]
    finals: dict[int, dict] = {}
    failures: dict[int, str] = {}
    outstanding: dict[Any, int] = {}
    live = set(range(len(actors)))
    interrupted = False
    while live:
        t_next = time.monotonic() + poll_interval_s
        try:
            for w in live - set(outstanding.values()):
                outstanding[actors[w].poll.remote()] = w
            ready, _ = ray.wait(list(outstanding), num_returns=len(outstanding),
                                timeout=max(poll_interval_s, 1.0))
            for ref in ready:
                w = outstanding.pop(ref)
                try:
                    msg = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - RayActorError: the actor or node died
                    failures[w] = _one_line(f"shard {w} died: {type(e).__name__}: {e}")
                    live.discard(w)
                    continue
                for d in msg["records"]:
                    rec = RequestRecord.from_dict(d)
                    streamed[w].append(rec)
                    if on_record is not None:
                        try:
                            on_record(rec)
                        except Exception:  # noqa: BLE001
                            pass
                if msg["done"]:
                    live.discard(w)
                    if msg["error"]:
                        failures[w] = _one_line(f"shard {w} failed: {msg['error']}")
                    else:
                        finals[w] = msg["result"]
            time.sleep(max(0.0, t_next - time.monotonic()))
        except KeyboardInterrupt:
            interrupted = True
            for w in live:
                try:
                    actors[w].stop.remote()
                except Exception:  # noqa: BLE001
                    pass
    return streamed, finals, failures, interrupted


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _partial_result(records: list[RequestRecord], start_at_s: float) -> dict:
    """What a shard that died or failed contributes: the records received, no health samples."""
    ends = [r.end_s for r in records if r.end_s is not None]
    return {"records": records, "lateness": [], "lags": [], "timestamps": {}, "cpu_s": 0.0,
            "start_s": start_at_s, "end_s": max(ends) if ends else None, "cancelled": True}


def _shard_info(w: int, info: dict, shard: dict, records: list, before: ClockOffset,
                after: ClockOffset | None, health: dict, failure: str | None) -> dict:
    """One shard's line of run.json's `client_shards`."""
    d = {**info, "shard": w, "n_requests": len(shard["requests"]), "n_records": len(records),
         "status": "failed" if failure else "ok", "error": failure,
         "clock_offset_s": before.offset_ns / 1e9,
         "clock_uncertainty_s": before.uncertainty_ns / 1e9,
         "clock_rtt_s": before.rtt_ns / 1e9, "clock_round_trips": before.round_trips,
         "clock_offset_after_s": after.offset_ns / 1e9 if after else None,
         "clock_uncertainty_after_s": after.uncertainty_ns / 1e9 if after else None,
         "health": health}
    d["client_node"] = (info.get("node_id") or "")[:12] or None
    return d



# ---------------------------------------------------------------------------- a local cluster

class LocalRayCluster:
    """`nodes` Ray nodes on this host (a head plus nodes - 1 more), `cpus` CPUs each, a small
    object store, no dashboard; a context manager whose `address` is the head's HOST:PORT.
    Each `ray start` runs in a session of its own, so every process it leaves behind (GCS,
    raylet, workers) is in that process group, and `stop` kills those groups (SIGTERM, then
    SIGKILL) and nothing else. `left_behind()`: pids still alive in them."""

    def __init__(self, nodes: int = 2, cpus: int = 1, port: int | None = None,
                 object_store_bytes: int = 100_000_000, nice: int = 10,
                 start_timeout_s: float = 180.0):
        self.nodes, self.cpus, self.nice = nodes, cpus, nice
        self.port = port or _free_port()
        self.object_store_bytes = object_store_bytes
        self.start_timeout_s = start_timeout_s
        self.address = f"127.0.0.1:{self.port}"
        self.tmp: Path | None = None
        self.groups: list[int] = []

    def start(self) -> "LocalRayCluster":
        self.tmp = Path(tempfile.mkdtemp(prefix="ibray-", dir="/tmp"))  # short: socket paths
        try:
            self._ray_start(["--head", "--port", str(self.port), "--include-dashboard=false"],
                            "head")
            for i in range(1, self.nodes):
                self._ray_start(["--address", self.address], f"node{i}")
        except BaseException:
            self.stop()
            raise
        return self

    def _ray_start(self, args: list[str], name: str) -> None:
        ray_bin = str(Path(sys.executable).parent / "ray")
        log = self.tmp / f"{name}.log"
        cmd = ["nice", "-n", str(self.nice)] if self.nice else []
        cmd += [ray_bin, "start", *args, "--temp-dir", str(self.tmp / name),
                "--num-cpus", str(self.cpus), "--num-gpus", "0",
                "--object-store-memory", str(self.object_store_bytes),
                "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
        with open(log, "w") as f:
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            self.groups.append(p.pid)
            try:
                rc = p.wait(timeout=self.start_timeout_s)
            except subprocess.TimeoutExpired:
                rc = None
        if rc != 0:
            tail = log.read_text(errors="replace")[-1500:]
            raise RayUnavailable(f"ray start ({name}) failed ({rc}): {_one_line(tail, 600)}")

    def left_behind(self) -> list[int]:
        return [pid for g in self.groups for pid in _group_pids(g)]

    def stop(self) -> None:
        """Disconnect this process, kill the nodes' process groups, remove the temp dir."""
        disconnect()
        for g in self.groups:
            for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(g, sig)
                except (ProcessLookupError, PermissionError):
                    break
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline and _group_pids(g):
                    time.sleep(0.2)
        if self.tmp is not None:
            subprocess.run(["rm", "-rf", str(self.tmp)], check=False)

    def __enter__(self) -> "LocalRayCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid` (Linux /proc)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(d))
    return pids
