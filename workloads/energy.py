"""Energy per load point: the measuring host's GPU (NVML) or CPU-package (RAPL) energy counters.

Role in the data flow: `workloads/runner.py` opens one meter for the run (`open_energy_meter`),
reads it just before and just after each load point (`meter.read()`) and hands both readings to
`energy_row`, which the `ResultsWriter` appends to energy.jsonl (one row per deployment x load
point x repeat). `workloads/results.py` turns the rows into the summary's `energy_j`,
`j_per_output_token` and `energy_source`; `meter.status()` goes into run.json.

Sources, in order of preference:
  nvml   `nvmlDeviceGetTotalEnergyConsumption` of every GPU NVML sees: millijoules since the
         driver was loaded (Volta and newer); joules = (after - before) / 1e3, summed over GPUs.
  rapl   /sys/class/powercap/intel-rapl:N/energy_uj of every package domain (`name` starting
         with "package"; sub-domains such as core/dram are inside the package and not added):
         microjoules, wrapping at max_energy_range_uj; a counter that went back wrapped once.
  unavailable  neither could be read; the note says why for each (never a made-up number).

What it measures: the whole measuring host's GPUs or CPU packages during the load point, so idle
deployments on the same chips and the load generator itself are in it, and a target on another
host (an external URL) is not: its energy is not this number. Rows are plain JSON:

    {"deployment", "load_point", "repeat", "source": "nvml"|"rapl"|"unavailable",
     "energy_j": float|null, "duration_s": float, "domains": {name: joules},
     "note": str|null, "scope": "measuring host"}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RAPL_ROOT = Path("/sys/class/powercap")

__all__ = ["EnergyReading", "EnergyMeter", "NvmlEnergy", "RaplEnergy", "UnavailableEnergy",
           "open_energy_meter", "open_nvml_energy", "open_rapl_energy", "rapl_package_domains",
           "wrapped_delta", "energy_row"]


@dataclass(frozen=True)
class EnergyReading:
    """One read of every counter: raw values in the source's unit (NVML mJ, RAPL uJ), keyed by
    domain ("gpu0", "package-0"); a domain that could not be read is absent (errors says why)."""

    t_s: float                                   # time.perf_counter() of the read
    counters: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def wrapped_delta(before: int, after: int, max_range: int | None) -> int | None:
    """after - before for a counter that wraps to 0 past `max_range`; a counter that went back
    wrapped once (a load point is far shorter than a wrap: minutes at full power). None when it
    went back and the range is unknown."""
    if after >= before:
        return after - before
    if not max_range:
        return None
    return after + max_range - before


class EnergyMeter:
    """Base: `source`, `note` (what is read, or why nothing is), `read()`, `joules()`."""

    source = "unavailable"
    unit_per_joule = 1.0

    def __init__(self, note: str):
        self.note = note

    def read(self) -> EnergyReading:
        return EnergyReading(time.perf_counter())

    def domain_delta(self, domain: str, before: int, after: int) -> int | None:
        return after - before if after >= before else None

    def joules(self, before: EnergyReading, after: EnergyReading
               ) -> tuple[float | None, dict[str, float], str | None]:
        """(total joules or None, joules per domain, a note when a domain could not be used).
        The total is None unless every domain gave a delta: a partial sum would understate."""
        per: dict[str, float] = {}
        problems = [f"{d}: {e}" for d, e in {**before.errors, **after.errors}.items()]
        for d in sorted(set(before.counters) | set(after.counters)):
            if d not in before.counters or d not in after.counters:
                if not any(p.startswith(f"{d}:") for p in problems):
                    problems.append(f"{d}: not read")
                continue
            delta = self.domain_delta(d, before.counters[d], after.counters[d])
            if delta is None:
                problems.append(f"{d}: counter went back ({before.counters[d]} -> "
                                f"{after.counters[d]})")
                continue
            per[d] = delta / self.unit_per_joule
        if self.source == "unavailable":
            return None, {}, self.note
        if problems or not per:
            return None, per, "; ".join(problems) or "no counter read"
        return sum(per.values()), per, None

    def status(self) -> dict[str, Any]:
        return {"source": self.source, "note": self.note, "scope": "measuring host"}

    def close(self) -> None:
        pass


class UnavailableEnergy(EnergyMeter):
    """No counter could be read; `note` says why."""


class NvmlEnergy(EnergyMeter):
    """NVML's total-energy counter of each GPU (mJ since the driver was loaded)."""

    source = "nvml"
    unit_per_joule = 1e3

    def __init__(self, nv, handles: list[tuple[int, Any]], names: list[str]):
        self.nv, self.handles = nv, handles
        super().__init__(f"NVML: {len(handles)} GPU(s) of this host ({', '.join(names)})")

    def read(self) -> EnergyReading:
        counters, errors = {}, {}
        for i, h in self.handles:
            try:
                counters[f"gpu{i}"] = int(self.nv.nvmlDeviceGetTotalEnergyConsumption(h))
            except Exception as e:  # noqa: BLE001 (a lost GPU: that load point has no total)
                errors[f"gpu{i}"] = f"{type(e).__name__}: {e}"
        return EnergyReading(time.perf_counter(), counters, errors)

    def close(self) -> None:
        try:
            self.nv.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


@dataclass(frozen=True)
class RaplDomain:
    name: str           # "package-0" (the domain's `name` file)
    energy_path: Path
    max_range_uj: int | None


class RaplEnergy(EnergyMeter):
    """RAPL package counters (uJ, wrapping at each domain's max_energy_range_uj)."""

    source = "rapl"
    unit_per_joule = 1e6

    def __init__(self, domains: list[RaplDomain]):
        self.domains = {d.name: d for d in domains}
        super().__init__(f"RAPL: {len(domains)} CPU package(s) of this host "
                         f"({', '.join(self.domains)})")

    def read(self) -> EnergyReading:
        counters, errors = {}, {}
        for d in self.domains.values():
            try:
                counters[d.name] = int(d.energy_path.read_text().strip())
            except (OSError, ValueError) as e:
                errors[d.name] = f"{type(e).__name__}: {e}"
        return EnergyReading(time.perf_counter(), counters, errors)

    def domain_delta(self, domain: str, before: int, after: int) -> int | None:
        return wrapped_delta(before, after, self.domains[domain].max_range_uj)


def open_nvml_energy() -> tuple[NvmlEnergy | None, str]:
    """(meter, "") when every GPU NVML sees has an energy counter, else (None, why not)."""
    try:
        import pynvml as nv  # nvidia-ml-py
    except ImportError:
        return None, "NVML: nvidia-ml-py (pynvml) not installed"
    try:
        nv.nvmlInit()
    except Exception as e:  # noqa: BLE001 (no driver, no GPU, a broken binding)
        return None, f"NVML: {e or type(e).__name__}"
    try:
        count = int(nv.nvmlDeviceGetCount())
        if count == 0:
            raise RuntimeError("no GPU found")
        handles, names = [], []
        for i in range(count):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            nv.nvmlDeviceGetTotalEnergyConsumption(h)   # NotSupported before Volta
            name = nv.nvmlDeviceGetName(h)
            handles.append((i, h))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
    except Exception as e:  # noqa: BLE001
        try:
            nv.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
        return None, f"NVML: no energy counter ({e or type(e).__name__})"
    return NvmlEnergy(nv, handles, names), ""


def rapl_package_domains(root: str | Path = RAPL_ROOT) -> tuple[list[RaplDomain], str]:
    """The package domains under a powercap root whose counter can be read, or ([], why not).
    A package domain is a top-level zone `intel-rapl:N` (AMD's kernels use the same driver and
    name) whose `name` starts with "package"."""
    root = Path(root)
    if not root.is_dir():
        return [], f"RAPL: no {root} (the kernel exposes no RAPL here, e.g. a VM)"
    zones = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    domains, why = [], []
    for z in zones:
        try:
            name = (z / "name").read_text().strip()
        except OSError:
            name = ""
        if not name.startswith("package"):
            continue
        try:
            int((z / "energy_uj").read_text().strip())
        except (OSError, ValueError) as e:
            why.append(f"{z / 'energy_uj'} not readable ({getattr(e, 'strerror', None) or e})")
            continue
        try:
            max_range = int((z / "max_energy_range_uj").read_text().strip())
        except (OSError, ValueError):
            max_range = None
        domains.append(RaplDomain(name, z / "energy_uj", max_range))
    if why:            # some package unreadable: a partial sum would understate the host
        return [], "RAPL: " + "; ".join(why)
    if not domains:
        return [], f"RAPL: no package domain under {root}"
    return domains, ""


def open_rapl_energy(root: str | Path = RAPL_ROOT) -> tuple[RaplEnergy | None, str]:
    domains, why = rapl_package_domains(root)
    return (RaplEnergy(domains), "") if domains else (None, why)


def open_energy_meter(*, nvml: bool = True, rapl_root: str | Path = RAPL_ROOT) -> EnergyMeter:
    """NVML if it gives every GPU's energy counter, else RAPL if its packages are readable, else
    an `UnavailableEnergy` whose note gives both reasons."""
    reasons = []
    if nvml:
        meter, why = open_nvml_energy()
        if meter is not None:
            return meter
        reasons.append(why)
    rapl, why = open_rapl_energy(rapl_root)
    if rapl is not None:
        return rapl
    reasons.append(why)
    return UnavailableEnergy("energy unavailable: " + "; ".join(reasons))


def energy_row(deployment: str, load_point: str, repeat: int, meter: EnergyMeter,
               before: EnergyReading, after: EnergyReading) -> dict[str, Any]:
    """energy.jsonl's row of one load point (see the module docstring)."""
    total, per, note = meter.joules(before, after)
    return {"deployment": deployment, "load_point": str(load_point), "repeat": int(repeat),
            "source": meter.source if total is not None else "unavailable",
            "energy_j": total, "duration_s": max(0.0, after.t_s - before.t_s),
            "domains": per, "note": note, "scope": "measuring host"}

