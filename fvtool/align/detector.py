"""MTCNN face detection (facenet-pytorch's P/R/O-nets, weights shipped in its wheel).

Why a wrapper instead of `facenet_pytorch.MTCNN.detect`:
- `detect` refuses a batch of images of different sizes and returns object arrays; here any list
  of images goes in, is grouped by size internally, and plain `Face` records come out;
- very large images are downscaled for detection (MTCNN's pyramid cost grows with the pixel
  count; a 6000x4000 photo would take seconds) and the box and landmarks are mapped back to source
  pixels, so the alignment still samples the full-resolution image;
- the minimum face size is in *source* pixels whatever the detection scale;
- face selection (largest / closest to the centre / most confident) is explicit and documented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from fvtool.align.options import DEFAULT_THRESHOLDS, KEEP_POLICIES, DetectorConfig
from fvtool.errors import InputError
from fvtool.runtime import resolve_device

__all__ = ["DEFAULT_THRESHOLDS", "KEEP_POLICIES", "DetectorConfig", "Face", "FaceDetector", "select_face"]

#: MTCNN's smallest pyramid window; a minimum face size below it would upsample the whole image
_PNET_CELL = 12


@dataclass(frozen=True)
class Face:
    """One detection in source-image pixel-index coordinates."""

    box: np.ndarray  # (4,) x1 y1 x2 y2
    prob: float | None  # None: given by the dataset (VGGFace2 landmarks, pre-aligned crops), not detected
    landmarks: np.ndarray  # (5, 2) left eye, right eye, nose, left mouth, right mouth

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


class FaceDetector:
    """Batched MTCNN returning every face per image; `select_face` picks the one to keep."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        from facenet_pytorch import MTCNN

        self.config = config or DetectorConfig()
        self.device = resolve_device(self.config.device)
        mtcnn = MTCNN(device=self.device)
        mtcnn.eval()
        self._nets = (mtcnn.pnet, mtcnn.rnet, mtcnn.onet)

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        """All faces of each RGB image (in detector order); images may differ in size."""
        out: list[list[Face]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.size, []).append(i)
        for size, idx in groups.items():
            for i, faces in zip(idx, self._detect_same_size([images[i] for i in idx], size), strict=True):
                out[i] = faces
        return out

    def _detect_same_size(self, images: list[Image.Image], size: tuple[int, int]) -> list[list[Face]]:
        from facenet_pytorch.models.utils.detect_face import detect_face

        w, h = size
        ratio = min(1.0, self.config.max_detect_side / max(w, h))
        if ratio < 1.0:
            dw, dh = max(1, round(w * ratio)), max(1, round(h * ratio))
            batch = [im.resize((dw, dh), Image.Resampling.BILINEAR, reducing_gap=2.0) for im in images]
        else:
            dw, dh = w, h
            batch = images
        minsize = max(float(_PNET_CELL), self.config.min_face_size * ratio)
        if min(dw, dh) < minsize:  # smaller than the smallest face searched: MTCNN's pyramid is empty
            return [[] for _ in images]
        with torch.inference_mode():
            boxes, points = detect_face(batch, minsize, *self._nets, list(self.config.thresholds),
                                        self.config.factor, self.device)
        sx, sy = w / dw, h / dh
        result = []
        for b, p in zip(boxes, points, strict=True):
            b = np.asarray(b, dtype=np.float64).reshape(-1, 5)
            p = np.asarray(p, dtype=np.float64).reshape(-1, 5, 2)
            faces = []
            for k in range(len(b)):
                box = _to_source(b[k, :4].reshape(2, 2), sx, sy).reshape(4)
                lm = _to_source(p[k], sx, sy)
                faces.append(Face(box=box, prob=float(b[k, 4]), landmarks=lm))
            faces = [f for f in faces if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= 1.0]
            result.append(faces)
        return result


def _to_source(points: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Detection-image index coordinates -> source index coordinates (pixel centres map exactly)."""
    if sx == 1.0 and sy == 1.0:
        return points.copy()
    out = np.empty_like(points)
    out[:, 0] = (points[:, 0] + 0.5) * sx - 0.5
    out[:, 1] = (points[:, 1] + 0.5) * sy - 0.5
    return out


def select_face(faces: list[Face], image_size: tuple[int, int], keep: str) -> Face | None:
    """The face to keep among several.

    - `largest`: largest box area (facenet-pytorch's default);
    - `center`: box centre closest to the image centre (the LFW convention: the labelled person is
      the one in the middle of the picture; a larger bystander is not picked);
    - `confident`: highest detector probability.
    Ties go to the earlier face, so the choice is deterministic.
    """
    if not faces:
        return None
    if keep == "largest":
        scores = [-f.area for f in faces]
    elif keep == "confident":
        scores = [-(f.prob if f.prob is not None else 1.0) for f in faces]
    elif keep == "center":
        cx, cy = (image_size[0] - 1) / 2.0, (image_size[1] - 1) / 2.0
        scores = [((f.box[0] + f.box[2]) / 2 - cx) ** 2 + ((f.box[1] + f.box[3]) / 2 - cy) ** 2 for f in faces]
    else:
        raise InputError(f"unknown face selection {keep!r}; choose one of {', '.join(KEEP_POLICIES)}")
    return faces[int(np.argmin(scores))]
