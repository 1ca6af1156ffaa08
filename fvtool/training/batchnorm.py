"""How batch-norm layers behave during training: per-process statistics, synchronised, or frozen.

Why a run-level choice: a BatchNorm layer in training mode normalises with the statistics of the
batch it sees. With several processes (DDP) each process sees only its part of the global batch,
so per-process statistics differ from the one-process run with the same global batch, and the
loss curves drift apart. The three modes (config key `batchnorm`, `fvtool train --batchnorm`):

  batch   plain BatchNorm: statistics of each process's part of the batch (PyTorch's DDP default;
          running statistics are broadcast from rank 0 at every forward). Identical to the
          one-process run only with one process.
  sync    `torch.nn.SyncBatchNorm`: statistics of the global batch (one all-reduce per BN layer
          per forward). Needs CUDA: PyTorch has no CPU kernel for it (it raises on CPU tensors).
  frozen  BN layers stay in eval mode during training: they normalise with their running
          statistics (not updated) and learn only their affine scale/shift. The usual choice
          when fine-tuning a pre-trained backbone (`--init-from`) with small per-GPU batches, and
          exact across process counts on the CPU (the distributed equivalence test uses it).

The state dict is the same in every mode (SyncBatchNorm and frozen layers keep BatchNorm's
parameter and buffer names), so checkpoints load into a plain model for `embed`.
"""

from __future__ import annotations

import types

import torch
import torch.nn as nn

from fvtool.errors import InputError
from fvtool.training.config import BATCHNORM_MODES

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """`train()` of a frozen BN layer: always eval mode, whatever the caller asks."""
    nn.Module.train(self, False)
    return self


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, _BN_TYPES)]


def apply_batchnorm_mode(module: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """Put `module`'s BN layers in `mode` (in place; returns `module`).

    `sync` converts the layers to SyncBatchNorm (same parameter objects, so an optimiser built
    before still holds them); `frozen` pins them in eval mode. `batch` changes nothing.
    """
    if mode not in BATCHNORM_MODES:
        raise InputError(f"batchnorm = {mode!r} is not one of {', '.join(BATCHNORM_MODES)}")
    if mode == "batch":
        return module
    if mode == "sync":
        if device.type != "cuda":
            raise InputError("--batchnorm sync needs CUDA: PyTorch's SyncBatchNorm has no CPU kernel. "
                             "On the CPU use --batchnorm frozen (exact across process counts) or batch "
                             "(per-process statistics)")
        if isinstance(module, _BN_TYPES):
            raise InputError("batchnorm = sync: the model itself is a BatchNorm layer; wrap it in a module")
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        assert converted is module  # the root is not a BN layer: children are replaced in place
        return module
    for m in batchnorm_layers(module):
        m.train = types.MethodType(_frozen_train, m)  # type: ignore[method-assign]
        nn.Module.train(m, False)
    return module
