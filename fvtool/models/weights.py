"""Reading user-supplied weight files safely (plain tensor state dicts only).

Why a module of its own: pretrained weights come from outside (facenet-pytorch's VGGFace2 file,
insightface's IResNet `.pth` files) and a pickle can run arbitrary code when loaded. Every weights
file fvtool reads goes through `torch.load(weights_only=True)` here, which refuses anything but
tensors and plain containers, and every mismatch is reported as an `InputError` naming the file.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from fvtool.errors import InputError


def load_state_dict_file(path: str | Path, owner: str) -> dict[str, torch.Tensor]:
    """Read a state dict with weights_only=True; accept a bare dict or one under 'state_dict'."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{owner}: weights file {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(f"{owner}: refused to load {p}: it is not a plain tensor state dict "
                         f"(torch.load weights_only=True rejected it: {str(e).splitlines()[0]})") from e
    except Exception as e:
        raise InputError(f"{owner}: cannot read weights file {p}: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise InputError(f"{owner}: {p} does not hold a state dict (name -> tensor)")
    return obj


def load_weights(module: nn.Module, path: str | Path, owner: str,
                 rename: Callable[[str], str | None] = lambda k: k) -> None:
    """Load `path` into `module` strictly; `rename` maps file keys to module keys (None: drop the key)."""
    state: dict[str, torch.Tensor] = {}
    for k, v in load_state_dict_file(path, owner).items():
        new = rename(k)
        if new is not None:
            state[new] = v
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{owner}: weights file {path} does not fit this network: {str(e)[:600]}") from e
