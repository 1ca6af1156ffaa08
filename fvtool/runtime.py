"""Where a stage runs: the device, the mixed-precision policy and the CPU threads.

Why one module: train, embed, align, verify and the interop commands all take `--device`,
`--amp` and `--threads`. Resolving them in one place gives every stage the same rules and the
same error text for a machine without CUDA, and a new device kind is added here only.

- `resolve_device("auto")` is CUDA when available, else the CPU; `cuda`, `cuda:N` and `cpu` are
  honoured; `cuda` without a GPU is an input error (`NO_CUDA`), not a torch traceback.
- `resolve_amp`: `auto` is bf16 on CUDA GPUs that support it (else fp16) and off on the CPU
  (bf16 there is slower for small convolutional nets on most CPUs); explicit modes are honoured.
- `torch_threads(n)`: torch's intra-op threads for a block, restored afterwards (None: unchanged).
- `usable_cpus()` / `busy_threads()` / `busy_advice()`: the thread count that does not oversubscribe a
  shared machine (below).

torch is imported inside `check_device` only, so the verify stage can check a `--device cpu`
without importing torch (verify runs on numpy).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fvtool.errors import InputError

if TYPE_CHECKING:
    import torch  # on use: `check_device("cpu")` (verify) must not import torch

#: the one message for "CUDA was asked for but this machine/process has none"
NO_CUDA = "no CUDA device is available here; use --device cpu"
AMP_MODES = ("auto", "off", "bf16", "fp16")


def no_cuda(device: str) -> InputError:
    """The error for `--device DEVICE` on a machine without CUDA."""
    return InputError(f"--device {device}: {NO_CUDA}")


def check_device(device: str) -> None:
    """Refuse a CUDA device on a machine without CUDA (imports torch only for CUDA devices)."""
    if not device.startswith("cuda"):
        return
    import torch  # only when CUDA is asked for: the verify stage otherwise runs without torch

    if not torch.cuda.is_available():
        raise no_cuda(device)


def resolve_device(device: str) -> torch.device:
    """`auto` -> CUDA when available, else the CPU; `cpu`, `cuda`, `cuda:N` as given."""
    import torch  # on use: `check_device("cpu")` (verify) must not import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r}: unknown device (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise no_cuda(device)
    return dev


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--amp MODE` on `device` (None: full precision)."""
    import torch  # on use: `check_device("cpu")` (verify) must not import torch

    if mode not in AMP_MODES:
        raise InputError(f"--amp {mode!r}: choose one of {', '.join(AMP_MODES)}")
    if mode == "off":
        return None
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def set_threads(n: int | None) -> None:
    """torch's intra-op CPU threads for the rest of the process (None or 0: torch's default)."""
    if n:
        import torch

        torch.set_num_threads(n)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to `n` inside the block and restored after it."""
    if not n:
        yield
        return
    import torch  # on use: `check_device("cpu")` (verify) must not import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)

# --- CPU threads on a shared machine ------------------------------------------------------------
# How many CPUs this process may use, whether other work already keeps them busy, and the torch thread
# count that does not oversubscribe them.
#
# Why: torch runs its intra-op work on OpenMP threads, one per CPU in the process's affinity mask, whose
# workers spin and wait for each other at every parallel region. On a machine already busy with other
# processes those threads are descheduled in turn and each region waits for the slowest one: measured on
# the 2-core VM shared with ~10 other jobs (load average 12), MTCNN alignment ran at 0.4-0.5 img/s with
# torch's 2 threads and at 1.2-1.5 img/s with 1 (`fvtool align` of 60 subset images, alternating runs),
# and `fvtool demo` spent 24 of 54 minutes aligning.
#
# Policy (`busy_threads`): when the 1-minute load average is at least the number of usable CPUs, i.e.
# other runnable work already fills them, use 1 thread; otherwise leave torch's default (one per usable
# CPU). `fvtool align` and `fvtool demo` apply it when `--threads` is not given and say so; `train` and
# `embed` only print the advice, because their numbers may differ in the last bits with the thread count
# and a run's result must not depend on the machine's load (align's detections do not: the same boxes
# and landmarks with 1 and 2 threads; the warped pixels differ by at most 1 grey level in ~0.3 % of
# pixels). `--threads N` always wins.

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
