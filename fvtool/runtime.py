"""Where a stage runs: the device, the mixed-precision policy and the CPU threads.

Why one module: train, embed, align, verify and the interop commands all take `--device`,
`--amp` and `--threads`. Resolving them in one place gives every stage the same rules and the
same error text for a machine without CUDA, and a new device kind is added here only.

- `resolve_device("auto")` is CUDA when available, else the CPU; `cuda`, `cuda:N` and `cpu` are
  honoured; `cuda` without a GPU is an input error (`NO_CUDA`), not a torch traceback.
- `resolve_amp`: `auto` is bf16 on CUDA GPUs that support it (else fp16) and off on the CPU
  (bf16 there is slower for small convolutional nets on most CPUs); explicit modes are honoured.
- `torch_threads(n)`: torch's intra-op threads for a block, restored afterwards (None: unchanged).

torch is imported inside `check_device` only, so the verify stage can check a `--device cpu`
without importing torch (verify runs on numpy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
