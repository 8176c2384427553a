"""Disaggregated workers placed on a Ray cluster: `serve --mode disagg --ray ADDRESS`.

Role in the data flow (router.py has the whole picture): without Ray the router spawns each
worker as a child process and hands it one end of a socketpair. With `DisaggOptions.ray_address`
the router instead calls `RayPlacement.start(...)`, which

1. connects the router's process to the Ray cluster (`connect`; Ray is imported only here and
   only inside functions: without it, `RayUnavailable` names `pip install 'infer-bench[ray]'`);
2. reserves one placement-group bundle per worker, {CPU: the worker's threads, GPU: 1 when the
   device is a GPU}, strategy SPREAD (Ray puts the bundles on as many different nodes as it
   can), and fails in one line when the cluster cannot hold them within the start-up timeout;
3. starts one `WorkerActor` per bundle (non-detached, never restarted, named
   `infer-bench-disagg-<tag>-<worker>` in the "infer-bench" namespace); its `info()` says where
   it landed (node id and IP, pid, a free TCP port on its node for the torch.distributed
   rendezvous);
4. calls each actor's `run(router_host, router_port, ...)`, which connects back to the router
   over TCP, sends {"type": "hello", "token", "name"} (the router drops a connection without
   the deployment's random token) and then runs the worker's main loop on that socket
   (worker.run_worker): the same JSON frames as over the socketpair.

The router learns a worker died when its control connection closes OR when the actor's `run`
call ends or errors (`RayWorker.done`, an asyncio future: a node that vanishes without closing
its TCP connections is still noticed, through Ray). `stop()` kills every actor and removes the
placement group.

KV between hosts goes over torch.distributed (the router sets transport "dist"): the decode
worker's link socket binds its node's IP (`link_host`), the process group's TCP rendezvous is
`tcp://<rank 0's node IP>:<a port free there>`, gloo on the CPU (its socket interface is the
one holding the node's IP, `GLOO_SOCKET_IFNAME`, unless set) and NCCL on GPUs (Ray gives each
GPU worker its own device, so "cuda:N" becomes that worker's "cuda").
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass, field

RAY_MISSING = "--ray needs Ray, which is not installed: pip install 'infer-bench[ray]'"
NAMESPACE = "infer-bench"


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached (one line)."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable(RAY_MISSING) from None
    return ray


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def connect(address: str) -> bool:
    """Connect this process to the Ray cluster at `address` (auto | HOST:PORT | ray://...);
    True when this call connected (the caller then disconnects), False when it already was."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, namespace=NAMESPACE, ignore_reinit_error=True,
                 log_to_driver=False, logging_level="ERROR")
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RayUnavailable(f"cannot connect to the Ray cluster at {address!r}: {msg}") from None
    return True


def actor_device(device: str) -> str:
    """A GPU worker sees only the GPU Ray gave it (CUDA_VISIBLE_DEVICES): always its "cuda"."""
    return "cuda" if str(device).startswith("cuda") else device


def worker_resources(device: str, threads: int) -> dict:
    """The bundle one worker asks the cluster for."""
    res = {"CPU": float(max(1, threads))}
    if str(device).startswith("cuda"):
        res["GPU"] = 1.0
    return res


def interface_of(ip: str) -> str | None:
    """The name of this host's network interface holding `ip` (Linux), else None."""
    import fcntl
    import struct

    siocgifaddr = 0x8915
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                raw = fcntl.ioctl(s.fileno(), siocgifaddr,
                                  struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        if socket.inet_ntoa(raw[20:24]) == ip:
            return name
    return None


class WorkerActor:
    """One prefill or decode worker, run as a Ray actor (see the module docstring)."""

    def __init__(self, name: str) -> None:
        import ray

        self.name = name
        self.node_id = ray.get_runtime_context().get_node_id() or ""
        self.node_ip = ray.util.get_node_ip_address()

    def info(self) -> dict:
        with socket.socket() as s:   # a free port on this node (the rendezvous, if rank 0)
            s.bind((self.node_ip, 0))
            port = s.getsockname()[1]
        return {"name": self.name, "node_id": self.node_id, "node_ip": self.node_ip,
                "hostname": socket.gethostname(), "pid": os.getpid(), "free_port": port}

    def run(self, router_host: str, router_port: int, token: str, env: dict) -> int:
        """Connect to the router and serve it until told to stop (the process then exits)."""
        os.environ.update({k: str(v) for k, v in env.items()})
        if "GLOO_SOCKET_IFNAME" not in os.environ:
            ifname = interface_of(self.node_ip)
            if ifname:
                os.environ["GLOO_SOCKET_IFNAME"] = ifname
        from .wire import MsgSocket
        from .worker import run_worker

        sock = socket.create_connection((router_host, int(router_port)), timeout=60)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctrl = MsgSocket(sock)
        ctrl.send({"type": "hello", "token": token, "name": self.name})
        return run_worker(ctrl, signals=False)


@dataclass
class RayWorker:
    """The router's view of one worker actor."""

    name: str
    actor: object
    info: dict = field(default_factory=dict)
    run_ref: object = None
    done: asyncio.Future | None = None   # set when the actor's run call ends: None or the error


class RayPlacement:
    """The actors of one deployment: `start` places them, `stop` kills them."""

    def __init__(self, address: str, startup_timeout_s: float = 300.0) -> None:
        self.address = address
        self.timeout_s = startup_timeout_s
        self.tag = uuid.uuid4().hex[:8]
        self.pg = None
        self.workers: dict[str, RayWorker] = {}
        self.router_ip = "127.0.0.1"
        self._connected = False
        self.closed = False          # stop() was called (place() may still be running)
        self.placed = False          # the placement group's bundles are reserved
        self.asks = ""               # what the workers ask for, for the messages

    def unplaced_message(self) -> str:
        return (f"the Ray cluster at {self.address} could not place the workers ({self.asks}) "
                f"within {self.timeout_s:g} s (`ray status` shows its free resources)")

    def place(self, names: list[str], resources: list[dict]) -> dict[str, dict]:
        """Blocking: connect, reserve a bundle per worker, start the actors; {name: info}.
        RayUnavailable / RuntimeError (one line) when the cluster cannot."""
        ray = import_ray()
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._connected = connect(self.address)
        self.router_ip = ray.util.get_node_ip_address()
        self.asks = ", ".join(f"{n} {r}" for n, r in zip(names, resources))
        self.pg = placement_group(resources, strategy="SPREAD")
        ready, _ = ray.wait([self.pg.ready()], timeout=self.timeout_s)
        if self.closed:      # stop() removed the group meanwhile (that also ends the wait)
            raise RuntimeError("the deployment was stopped while its workers were placed")
        if not ready:
            raise RuntimeError(self.unplaced_message())
        self.placed = True
        cls = ray.remote(WorkerActor)
        for i, (name, res) in enumerate(zip(names, resources)):
            actor = cls.options(
                num_cpus=res.get("CPU", 1), num_gpus=res.get("GPU", 0), max_restarts=0,
                max_task_retries=0, name=f"infer-bench-disagg-{self.tag}-{name}",
                namespace=NAMESPACE,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.pg, placement_group_bundle_index=i),
            ).remote(name)
            self.workers[name] = RayWorker(name, actor)
        try:
            infos = ray.get([w.actor.info.remote() for w in self.workers.values()],
                            timeout=self.timeout_s)
        except Exception as e:  # noqa: BLE001 - GetTimeoutError, RayActorError
            raise RuntimeError(_one_line(f"the worker actors did not start on the Ray cluster: "
                                         f"{type(e).__name__}: {e}")) from None
        for w, info in zip(self.workers.values(), infos):
            w.info = info
        if self.closed:  # stopped meanwhile (start-up timeout, a signal): leave nothing behind
            self.stop()
            raise RuntimeError("the deployment was stopped while its workers were placed")
        return {n: w.info for n, w in self.workers.items()}

    def run(self, name: str, router_port: int, token: str, env: dict,
            loop: asyncio.AbstractEventLoop) -> RayWorker:
        """Start worker `name`'s main loop; its `done` future resolves when the call ends."""
        w = self.workers[name]
        w.run_ref = w.actor.run.remote(self.router_ip, router_port, token, env)
        w.done = loop.create_future()

        def finished(fut) -> None:
            try:
                fut.result()
                why = "its Ray actor's run call returned"
            except BaseException as e:  # noqa: BLE001 - RayActorError: the actor or node died
                why = _one_line(f"its Ray actor ended: {type(e).__name__}: {e}", 200)
            loop.call_soon_threadsafe(lambda: w.done.done() or w.done.set_result(why))

        w.run_ref.future().add_done_callback(finished)
        return w

    def kill(self) -> None:
        """Blocking: kill every actor (Ray takes it as an intended exit)."""
        self.closed = True
        try:
            ray = import_ray()
        except RayUnavailable:
            return
        if not ray.is_initialized():
            return
        for w in self.workers.values():
            try:
                ray.kill(w.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass

    def stop(self) -> None:
        """Blocking: kill every actor, remove the placement group, disconnect if we connected."""
        self.kill()
        ray = import_ray()
        if not ray.is_initialized():
            return
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group
            try:
                remove_placement_group(self.pg)
            except Exception:  # noqa: BLE001
                pass
        if self._connected:
            ray.shutdown()
            self._connected = False
