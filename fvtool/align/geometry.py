"""Face geometry: the crop and similarity alignments, and the centre-crop fallback.

Two output modes, because the two families of reference code expect different inputs:

- `crop`: the detector box plus a margin, resized to a square, exactly as facenet-pytorch's
  `extract_face` does (margin in *output* pixels; box clipped to the image; PIL bilinear resize).
  FaceNet-style models were trained on such crops.
- `similarity`: the 5 MTCNN landmarks mapped onto the standard 112x112 five-point ArcFace template
  (insightface `arcface_dst`) by a least-squares similarity transform (Umeyama 1991: rotation,
  uniform scale, translation; no shear, no reflection), scaled to the requested size. Eyes end up
  level and at the same height in every crop, which margin-loss models (ArcFace, CosFace) assume.

Coordinates: landmarks and boxes are in pixel-index coordinates (pixel centres at integers), as
MTCNN reports them and as insightface's `cv2.warpAffine` uses them. PIL's affine transform works in
continuous coordinates (pixel centres at +0.5); `_pil_affine` converts between the two.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: insightface `arcface_dst`: left eye, right eye, nose tip, left mouth corner, right mouth corner
#: (left/right as seen in the image), in pixels of a 112x112 crop.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

#: fill for output pixels that fall outside the source image (insightface uses black, too)
OUTSIDE_FILL = (0, 0, 0)


def template(size: int) -> np.ndarray:
    """The five-point template for a `size` x `size` crop (the 112 template scaled uniformly)."""
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform mapping `src` points onto `dst` points (Umeyama 1991).

    Returns the 2x3 matrix `M` with `dst ~= M[:, :2] @ p + M[:, 2]`. Reflections are excluded
    (a mirrored face is not the same face geometry); same algorithm as skimage's
    `SimilarityTransform.estimate` used by insightface.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"umeyama needs two equal (N>=2, 2) point arrays, got {src.shape} and {dst.shape}")
    n = len(src)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    var_s = (s_c**2).sum() / n
    if var_s <= 0:
        raise ValueError("umeyama: source points are all identical")
    scale = float((sig * d).sum() / var_s)
    m = np.empty((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a 2x3 affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ m[:, :2].T + m[:, 2]


def similarity_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 matrix (index coordinates) taking source landmarks onto the `size` template."""
    return umeyama(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), template(size))


def warp_similarity(img: Image.Image, landmarks: np.ndarray, size: int) -> Image.Image:
    """Align `img` so its 5 landmarks land on the template of a `size` x `size` crop.

    When the face is much larger than the output (scale < 1/2), the source is first reduced by an
    integer box filter so the bilinear warp does not alias (a 1000-px face warped straight down to
    112 px would look like a sampled, jagged image, unlike the small faces the model sees).
    """
    m = similarity_matrix(landmarks, size)
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    factor = int(1.0 / scale) if scale < 0.5 else 1
    if factor > 1:
        # index -> continuous (+0.5), divide by factor, continuous -> index (-0.5)
        img = img.reduce(factor)
        m = _compose_reduce(m, factor)
    return _pil_affine(img, m, size)


def _compose_reduce(m: np.ndarray, factor: int) -> np.ndarray:
    """Matrix on the reduced image equivalent to `m` on the full one (index coordinates)."""
    # p_full = (p_red + 0.5) * factor - 0.5
    to_full = np.array([[factor, 0.0, 0.5 * factor - 0.5], [0.0, factor, 0.5 * factor - 0.5]])
    return _compose(m, to_full)


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix of `x -> a(b(x))` for 2x3 affine matrices."""
    out = np.empty((2, 3))
    out[:, :2] = a[:, :2] @ b[:, :2]
    out[:, 2] = a[:, :2] @ b[:, 2] + a[:, 2]
    return out


def _pil_affine(img: Image.Image, m: np.ndarray, size: int) -> Image.Image:
    """Warp with `m` (source index coords -> output index coords) into a `size` square.

    PIL wants the inverse map in continuous coordinates: in_c = A^-1 (out_c - 0.5 - t) + 0.5.
    """
    a = m[:, :2]
    t = m[:, 2]
    a_inv = np.linalg.inv(a)
    offset = a_inv @ (-t - 0.5) + 0.5
    data = (a_inv[0, 0], a_inv[0, 1], offset[0], a_inv[1, 0], a_inv[1, 1], offset[1])
    return img.transform((size, size), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR,
                         fillcolor=OUTSIDE_FILL)


def crop_box(img: Image.Image, box: np.ndarray, size: int, margin: float) -> Image.Image:
    """facenet-pytorch's `extract_face`: box plus `margin` output pixels, clipped, resized to a square.

    Same arithmetic (including `int()` truncation and clipping) so crops are pixel-identical to
    `facenet_pytorch.extract_face`, which tests check.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    mx = margin * (x2 - x1) / (size - margin)
    my = margin * (y2 - y1) / (size - margin)
    w, h = img.size
    b = (
        int(max(x1 - mx / 2, 0)),
        int(max(y1 - my / 2, 0)),
        int(min(x2 + mx / 2, w)),
        int(min(y2 + my / 2, h)),
    )
    if b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"face box {box} lies outside the {w}x{h} image")
    return img.crop(b).resize((size, size), Image.Resampling.BILINEAR)


def center_crop(img: Image.Image, size: int, fraction: float) -> Image.Image:
    """The central square of side `fraction * min(width, height)`, resized to `size`.

    The fallback for images without a detected face (the LFW convention: the labelled face is
    centred in the image).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"centre-crop fraction must be in (0, 1], got {fraction}")
    w, h = img.size
    side = max(1.0, fraction * min(w, h))
    left, top = (w - side) / 2.0, (h - side) / 2.0
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
