"""How many CPUs this process may use, whether other work already keeps them busy, and the torch thread
count that does not oversubscribe them.

Why: torch runs its intra-op work on OpenMP threads, one per CPU in the process's affinity mask, whose
workers spin and wait for each other at every parallel region. On a machine already busy with other
processes those threads are descheduled in turn and each region waits for the slowest one: measured on
the 2-core VM shared with ~10 other jobs (load average 12), MTCNN alignment ran at 0.4-0.5 img/s with
torch's 2 threads and at 1.2-1.5 img/s with 1 (`fvtool align` of 60 subset images, alternating runs),
and `fvtool demo` spent 24 of 54 minutes aligning.

Policy (`busy_threads`): when the 1-minute load average is at least the number of usable CPUs, i.e.
other runnable work already fills them, use 1 thread; otherwise leave torch's default (one per usable
CPU). `fvtool align` and `fvtool demo` apply it when `--threads` is not given and say so; `train` and
`embed` only print the advice, because their numbers may differ in the last bits with the thread count
and a run's result must not depend on the machine's load (align's detections do not: the same boxes
and landmarks with 1 and 2 threads; the warped pixels differ by at most 1 grey level in ~0.3 % of
pixels). `--threads N` always wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: cgroup v2 CPU quota of this container ("max 100000" = none, "200000 100000" = 2 CPUs)
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def load_average() -> float | None:
    """The 1-minute load average (runnable + waiting tasks), None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_note() -> str | None:
    """'load 12.1 on 2 CPUs' when other work already fills the usable CPUs, else None."""
    load, cpus = load_average(), usable_cpus()
    if load is None or cpus < 2 or load < cpus:
        return None
    return f"load {load:.1f} on {cpus} CPUs"


def busy_threads() -> tuple[int | None, str | None]:
    """(threads, note): (1, why) on a busy machine, else (None = torch's default, None)."""
    busy = busy_note()
    if busy is None:
        return None, None
    return 1, f"the machine is busy ({busy}): torch runs 1 thread instead of {usable_cpus()} (--threads N overrides)"


def busy_advice() -> str | None:
    """For stages that keep torch's default on a busy machine (train, embed): the advice, or None."""
    busy = busy_note()
    if busy is None:
        return None
    return (f"the machine is busy ({busy}): torch's {usable_cpus()} threads will wait on each other; "
            "--threads 1 is usually several times faster on a shared machine")
