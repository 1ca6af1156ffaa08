"""Export a trained embedder to ONNX, and check the export against PyTorch on a real batch.

Why the legacy (TorchScript) exporter: it needs no extra package (the torch.export-based one
needs onnxscript) and handles every fvtool backbone; `dynamo=False` makes the choice explicit.
The graph takes normalised float images [B, 3, S, S] (the run's normalisation is stored in the
model's metadata) and returns embeddings [B, D] with a dynamic batch axis.
The check runs the exported model with ONNX Runtime when installed (else only the ONNX
checker) and compares its outputs with PyTorch's on the same inputs.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fvtool.atomic import atomic_path, sha256_file
from fvtool.errors import InputError
from fvtool.training.checkpoint import load_trained_method


@dataclass
class ExportResult:
    path: Path
    input_size: int
    embedding_size: int
    checker: str  # "onnxruntime" or "onnx.checker"
    max_abs_diff: float | None  # None when onnxruntime is absent
    metadata: dict[str, str]


def export_onnx(checkpoint: str | Path, out: str | Path, *, prefer: str = "best", opset: int = 17,
                check_batch: np.ndarray | None = None, atol: float = 1e-4) -> ExportResult:
    """Export the embedder of a run/checkpoint to `out` (atomic) and verify it.

    `check_batch`: normalised float32 images [B, 3, S, S] for the output comparison (default:
    a seeded random batch).
    """
    try:
        import onnx
    except ImportError:
        raise InputError("ONNX export needs the onnx package: .venv/bin/pip install -e '.[onnx]'") from None

    method, config, _state, ckpt = load_trained_method(checkpoint, prefer=prefer)
    model = method.embedder.eval().float()
    s = config.input_size
    if check_batch is None:
        check_batch = np.random.default_rng(0).standard_normal((4, 3, s, s)).astype(np.float32)
    if check_batch.shape[1:] != (3, s, s):
        raise InputError(f"check batch has shape {check_batch.shape}, the model takes [B, 3, {s}, {s}]")
    x = torch.from_numpy(check_batch)
    with torch.inference_mode():
        ref = model(x).float().numpy()
    metadata = {
        "fvtool_checkpoint_sha256": sha256_file(ckpt),
        "backbone": config.backbone,
        "input_size": str(s),
        "normalisation": config.normalisation,
        "config": json.dumps(config.to_dict(), default=str),
    }
    out = Path(out)
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["images"],
                              output_names=["embeddings"],
                              dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
        proto = onnx.load(str(tmp))
        for k, v in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        checker, diff = "onnx.checker", None
        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        if ort is not None:
            sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = sess.run(["embeddings"], {"images": check_batch})[0]
            diff = float(np.abs(got - ref).max())
            checker = "onnxruntime"
            if not diff <= atol * max(1.0, float(np.abs(ref).max())):
                raise InputError(f"ONNX outputs differ from PyTorch's by {diff:.3g} (> tolerance); not writing {out}")
    return ExportResult(out, s, int(ref.shape[1]), checker, diff, metadata)
