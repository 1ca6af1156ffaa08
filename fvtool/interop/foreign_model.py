"""Embedders from outside fvtool: an ONNX file, a TorchScript file, or a registry backbone + weights.

Why: comparing a fvtool result with a known model (insightface's zoo ships ONNX files; facenet's
VGGFace2 weights load into `inception_resnet_v1`) should not need a training run around it. Every
kind is wrapped as an `nn.Module` taking normalised float images [B, 3, S, S] in RGB order, so the
embed stage runs all of them through the same cache, normalisation, flip TTA and resumable writer.

`--model SPEC`:
  FILE.onnx                   run with onnxruntime (CUDA provider when the device is CUDA and
                              onnxruntime has it, else CPU). The input shape is read from the graph:
                              a fixed channel count other than 3, or a fixed H x W other than
                              `--input-size`, is refused before any image is read.
  FILE (TorchScript archive)  `torch.jit.load`. A TorchScript file is a program: loading it runs
                              code from the file. Refused unless the caller passes `trust=True`
                              (`--trust-model`). Its input size is checked by one probe forward.
  NAME:weights=FILE[,k=v...]  a registry backbone (fvtool/models/registry.py; `timm:<model>` too) built for
                              `--input-size`, with a plain state dict read by
                              `torch.load(weights_only=True)` (fvtool/models/weights.py).

Preprocessing (`Preprocess`): pixels x in 0..255 become (x - mean) / std per channel, in the
channel order the model expects (insightface's zoo: mean = std = 127.5; their ONNX files mostly
take RGB, some older ones BGR; facenet-pytorch: mean 127.5, std 128, RGB, 160 x 160).
The BGR swap happens inside the wrapper, after normalisation, so mean/std are always given in
RGB order.
"""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from fvtool.atomic import sha256_file
from fvtool.data.transforms import Normalisation
from fvtool.errors import InputError

CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class Preprocess:
    """What the foreign model expects: square input side, per-channel mean/std in 0..255 pixel units
    (RGB order), the channel order it takes, and the central crop of the source images."""

    input_size: int = 112
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    channels: str = "rgb"
    crop: float = 1.0

    def __post_init__(self) -> None:
        if not 8 <= self.input_size <= 1024:
            raise InputError(f"--input-size {self.input_size} is outside 8..1024")
        if self.channels not in CHANNEL_ORDERS:
            raise InputError(f"--channels {self.channels!r}: choose rgb or bgr")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise InputError("--mean/--std take one value or three (R,G,B)")
        if not all(np.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise InputError(f"--std must be positive and --mean finite (got mean {self.mean}, std {self.std})")

    @staticmethod
    def triple(text: str, what: str) -> tuple[float, float, float]:
        """'127.5' or '123.7,116.3,103.5' -> an RGB triple."""
        try:
            vals = [float(v) for v in text.split(",")]
        except ValueError:
            raise InputError(f"{what} {text!r}: give one number or three comma-separated (R,G,B)") from None
        if len(vals) == 1:
            vals = vals * 3
        if len(vals) != 3:
            raise InputError(f"{what} {text!r}: give one number or three comma-separated (R,G,B)")
        return (vals[0], vals[1], vals[2])

    def normalisation(self) -> Normalisation:
        """The same (x/255 - mean) / std rule fvtool's own models use, in [0, 1] units."""
        return Normalisation("custom", tuple(m / 255.0 for m in self.mean),  # type: ignore[arg-type]
                             tuple(s / 255.0 for s in self.std))  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"(x - {list(self.mean)}) / {list(self.std)} on 0..255 pixels, {self.channels.upper()}"


@dataclass
class ForeignModel:
    """A loaded foreign embedder: `module` maps normalised RGB [B, 3, S, S] to [B, D]."""

    module: nn.Module
    kind: str  # onnx, torchscript, backbone
    spec: str  # the --model text
    path: Path  # the model or weights file
    sha256: str
    channels_last: bool  # whether the module profits from channels_last input
    facts: dict[str, Any]  # what the loader learned (ONNX input name/shape, provider, backbone options)


class _Channels(nn.Module):
    """Swap RGB -> BGR before the wrapped model when it takes BGR."""

    def __init__(self, inner: nn.Module, channels: str) -> None:
        super().__init__()
        self.inner = inner
        self.bgr = channels == "bgr"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.flip(1) if self.bgr else x)


class _OnnxModule(nn.Module):
    """An onnxruntime session as a module (inference only; numpy in, numpy out)."""

    def __init__(self, session: Any, input_name: str, fixed_batch: int | None) -> None:
        super().__init__()
        self.session = session
        self.input_name = input_name
        self.fixed_batch = fixed_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        if self.fixed_batch is None:
            out = self.session.run(None, {self.input_name: arr})[0]
        else:  # a graph exported with a fixed batch size: run it batch by batch, padding the last
            b, parts = self.fixed_batch, []
            for i in range(0, len(arr), b):
                chunk = arr[i:i + b]
                pad = b - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
                parts.append(self.session.run(None, {self.input_name: chunk})[0][: b - pad])
            out = np.concatenate(parts)
        out = np.asarray(out, dtype=np.float32).reshape(len(arr), -1)
        return torch.from_numpy(out).to(x.device)


def _dims(shape: list[Any]) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def _load_onnx(path: Path, pre: Preprocess, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise InputError("embedding an ONNX model needs onnxruntime: .venv/bin/pip install onnxruntime") from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: the ONNX runtime's warnings go to stderr otherwise
    n = torch.get_num_threads()
    opts.intra_op_num_threads = n
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception classes for bad files
        raise InputError(f"{path}: onnxruntime cannot load this file as an ONNX model: "
                         f"{str(e).splitlines()[0][:300]}") from None
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise InputError(f"{path}: the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                         "an embedder takes one image batch")
    inp = inputs[0]
    shape = _dims(list(inp.shape))
    if len(shape) != 4:
        raise InputError(f"{path}: the model's input {inp.name!r} has shape {inp.shape}; expected an NCHW image "
                         "batch [B, 3, H, W]")
    _b, c, h, w = shape
    if c is not None and c != 3:
        raise InputError(f"{path}: the model takes {c}-channel input (shape {inp.shape}); fvtool embeds 3-channel "
                         "colour images (NCHW, channel axis 1). An NHWC model would need re-exporting as NCHW.")
    if (h is not None and h != pre.input_size) or (w is not None and w != pre.input_size):
        raise InputError(f"{path}: the model takes {h}x{w} input (shape {inp.shape}), not --input-size "
                         f"{pre.input_size}; pass --input-size {h if h == w else '<its size>'}")
    if "float" not in str(inp.type):
        raise InputError(f"{path}: the model's input is {inp.type}; fvtool feeds float images")
    facts = {"input_name": inp.name, "input_shape": [str(d) for d in inp.shape], "providers": sess.get_providers()}
    return _OnnxModule(sess, inp.name, shape[0]), facts


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a `code/` folder (a state dict saved by torch.save has none)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _probe(module: nn.Module, pre: Preprocess, path: Path, device: torch.device) -> int:
    """One forward at the input size: a wrong size/channel count fails here with the model's message."""
    x = torch.zeros(2, 3, pre.input_size, pre.input_size, device=device)
    try:
        with torch.inference_mode():
            y = module(x)
    except Exception as e:  # a TorchScript error is a RuntimeError subclass with a long trace; keep the gist
        first = next((ln for ln in str(e).splitlines() if ln.strip()), str(e))
        raise InputError(f"{path}: the model does not take a [B, 3, {pre.input_size}, {pre.input_size}] batch "
                         f"(wrong --input-size, or not a 3-channel NCHW model): {first[:300]}") from None
    if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != 2:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise InputError(f"{path}: the model returned {shape} for a batch of 2; an embedder returns [B, D]")
    return int(y.shape[1])


def _parse_backbone(spec: str) -> tuple[str, dict[str, Any]] | None:
    """'iresnet50:weights=F,embedding_size=512' -> (name, options); None when SPEC is not NAME:k=v.
    NAME may itself hold a colon (`timm:convnext_atto:weights=F`): it ends at the last colon before the
    first '='."""
    head, eq, _ = spec.partition("=")
    name, sep, key = head.rpartition(":")
    if not eq or not sep or not name or "," in key:
        return None
    rest = spec[len(name) + 1:]
    from fvtool.models.registry import TIMM_PREFIX, backbone_names

    if name not in backbone_names() and not (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX)):
        raise InputError(f"--model {spec!r}: {name!r} is not a registry backbone (known: "
                         f"{', '.join(backbone_names())}); an ONNX or TorchScript file is given by its path")
    opts: dict[str, Any] = {}
    for part in rest.split(","):
        k, eq, v = part.partition("=")
        if not eq or not k:
            raise InputError(f"--model {spec!r}: options are key=value, comma-separated (got {part!r})")
        opts[k.strip()] = int(v) if v.strip().isdigit() else v.strip()
    if "weights" not in opts:
        raise InputError(f"--model {spec!r}: a registry backbone needs weights=FILE (fvtool never downloads weights)")
    return name, opts


def load_foreign_model(spec: str, pre: Preprocess, device: torch.device, *, trust: bool = False) -> ForeignModel:
    """Load `spec` (see the module docstring), check it takes [B, 3, S, S], wrap it for `pre.channels`."""
    parsed = None if Path(spec).is_file() else _parse_backbone(spec)
    if parsed is not None:
        from fvtool.models.registry import build_backbone, get_backbone_spec
        from fvtool.models.weights import load_weights

        name, opts = parsed
        weights = Path(str(opts["weights"]))
        opts = {**opts, "weights": str(weights)}
        esize = opts.pop("embedding_size", 512)
        if "weights" in get_backbone_spec(name).options():  # its own loader (iresnet: insightface's key names)
            net = build_backbone(name, embedding_size=esize, input_size=pre.input_size, **opts)
        else:  # any other registry or timm: backbone: a state dict of the module as fvtool builds it
            net = build_backbone(name, embedding_size=esize, input_size=pre.input_size,
                                 **{k: v for k, v in opts.items() if k != "weights"})
            load_weights(net, weights, f"--model {spec}")
        net = net.eval().to(device)
        dim = _probe(net, pre, weights, device)
        facts = {"backbone": name, "options": {k: v for k, v in opts.items() if k != "weights"},
                 "embedding_size": dim}
        return ForeignModel(_Channels(net, pre.channels), "backbone", spec, weights, sha256_file(weights), True, facts)

    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--model {spec}: no such file (give an .onnx file, a TorchScript file, or "
                         "BACKBONE:weights=FILE)")
    if path.suffix.lower() == ".onnx":
        module, facts = _load_onnx(path, pre, device)
        dim = _probe(module, pre, path, device)
        return ForeignModel(_Channels(module, pre.channels), "onnx", spec, path, sha256_file(path), False,
                            {**facts, "embedding_size": dim})
    if _is_torchscript(path):
        if not trust:
            raise InputError(f"{path} is a TorchScript file: loading it runs code stored in the file, with your "
                             "permissions. Pass --trust-model only for a file from a source you trust (or use its "
                             "ONNX export, or BACKBONE:weights=FILE with a plain state dict).")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch's "jit is deprecated" notice
                net = torch.jit.load(str(path), map_location=device)
        except Exception as e:
            raise InputError(f"{path}: cannot load as TorchScript: {str(e).splitlines()[0][:300]}") from None
        net = net.eval()
        dim = _probe(net, pre, path, device)
        return ForeignModel(_Channels(net, pre.channels), "torchscript", spec, path, sha256_file(path), False,
                            {"embedding_size": dim})
    raise InputError(f"--model {spec}: neither an .onnx file nor a TorchScript archive; a plain state dict "
                     "(.pth) is loaded as BACKBONE:weights=FILE, e.g. iresnet50:weights=backbone.pth")


def onnx_input_size(spec: str) -> int | None:
    """The fixed square input side an ONNX file declares (None: not ONNX, dynamic, or unreadable)."""
    path = Path(spec)
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return None
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        dims = model.graph.input[0].type.tensor_type.shape.dim
        h, w = (d.dim_value for d in dims[2:4]) if len(dims) == 4 else (0, 0)
    except Exception:  # let the loader report an unreadable file with its own message
        return None
    return h if h and h == w else None
