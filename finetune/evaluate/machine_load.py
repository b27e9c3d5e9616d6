"""What else the machine was doing while a system was timed: other processes' CPU, steal, load.

A `Snapshot` reads the kernel's counters (`/proc/stat`, `/proc/loadavg`) and this process's
own CPU time; `load_between(a, b)` turns two of them into a `LoadSample`. CPU that neither
this process nor the idle loop used went to someone else, and on a 2-core machine that
someone else is charged to whichever system is being timed. Where the kernel gives no such
counters (not Linux), the sample says so instead of reporting zero.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STAT = Path("/proc/stat")
LOADAVG = Path("/proc/loadavg")
# Other processes using a quarter of a core or more on average, or the hypervisor taking 5% of
# the CPU time, is load that shows in timings at these model sizes; an idle shared machine
# here stays near 0.02 cores.
BUSY_CORES = 0.25
BUSY_STEAL = 0.05


@dataclass(frozen=True)
class Snapshot:
    wall: float  # monotonic seconds
    busy: float | None  # CPU-seconds all processes spent working, from /proc/stat
    steal: float | None  # CPU-seconds the hypervisor gave to other guests
    total: float | None  # all CPU-seconds the kernel accounted
    own: float  # this process's CPU-seconds (every thread)
    loadavg: float | None  # 1-minute load average


@dataclass(frozen=True)
class LoadSample:
    seconds: float
    others_cores: float | None  # average cores used by other processes
    steal_share: float | None  # share of CPU time stolen by the hypervisor
    loadavg: float | None  # 1-minute load average at the end (lags by design of the kernel)

    @property
    def busy(self) -> bool:
        return (self.others_cores or 0) >= BUSY_CORES or (self.steal_share or 0) >= BUSY_STEAL

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "busy": self.busy}


def snapshot() -> Snapshot:
    busy = steal = total = None
    fields = _cpu_fields()
    if fields:
        tick = os.sysconf("SC_CLK_TCK")
        # user nice system idle iowait irq softirq steal [guest guest_nice: inside user/nice]
        user, nice, system, idle, iowait, irq, softirq, stolen = (fields + [0] * 8)[:8]
        busy = (user + nice + system + irq + softirq) / tick
        steal = stolen / tick
        total = (user + nice + system + idle + iowait + irq + softirq + stolen) / tick
    return Snapshot(
        wall=time.monotonic(),
        busy=busy,
        steal=steal,
        total=total,
        own=time.process_time(),  # every thread's CPU time, to the nanosecond
        loadavg=_loadavg(),
    )


def load_between(start: Snapshot, end: Snapshot) -> LoadSample:
    seconds = max(end.wall - start.wall, 1e-9)
    others = steal = None
    if start.busy is not None and end.busy is not None:
        # Our own CPU time is counted at a finer grain than /proc/stat's ticks: never below 0.
        others = max(0.0, (end.busy - start.busy) - (end.own - start.own)) / seconds
        accounted = (end.total or 0) - (start.total or 0)
        steal = (end.steal - start.steal) / accounted if accounted > 0 else 0.0
    return LoadSample(seconds=seconds, others_cores=others, steal_share=steal, loadavg=end.loadavg)


def _cpu_fields() -> list[int] | None:
    try:
        first = STAT.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    return [int(v) for v in first[1:]]


def _loadavg() -> float | None:
    try:
        return float(LOADAVG.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
