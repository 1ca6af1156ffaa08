"""IJB-B / IJB-C template protocols in their published layout (the insightface release).

Layout under ROOT (IJB-B: `ijbb_` names and 1:N galleries S1/S2 instead of G1/G2):
    loose_crop/<name>.jpg                   the face images
    meta/ijbc_face_tid_mid.txt              `<name> <template id> <media id>` per image
    meta/ijbc_name_5pts_score.txt           `<name> x1 y1 ... x5 y5 <detector score>`, same row order
    meta/ijbc_template_pair_label.txt       `<template 1> <template 2> <1|0>` (1:1 verification)
    meta/ijbc_1N_gallery_G1.csv, _G2.csv    1:N galleries: header, then TEMPLATE_ID,SUBJECT_ID,FILENAME,...
    meta/ijbc_1N_probe_mixed.csv            1:N probes, same columns

Pipeline (`fvtool align ijbc:ROOT` -> `fvtool embed` -> `fvtool verify/identify --protocol ijbc:ROOT`):
1. `align_ijb`: each loose crop is warped onto fvtool's five-point ArcFace template from the given
   landmarks (fvtool/align/geometry.py, the transform `fvtool align --mode similarity` uses) into an
   aligned folder with a manifest (key = image name, detector score in `prob`, the 5 points).
2. the embed stage embeds it (flip TTA optional: `--tta flip-sum`).
3. `pool_templates` (insightface's ijb_11.py rule, written down): image features (raw, or
   L2-normalised with `image_norm=1`), multiplied by the detector score (`detector=1`, the default,
   insightface's D1) -> media feature = mean of its images' features -> template feature = sum of its
   media features -> L2-normalised. Scores are cosines of template features, computed by the verify
   stage in blocks of pairs (`fvtool.verification.scoring.pair_scores`), so IJB-C's 15.7 M pairs
   never need more than a block of rows at once.
4. 1:1: the template pairs become a pairs protocol on the template features and go through the
   verify stage: TAR at FAR 1e-6 ... 1e-1 by fvtool's (bob's) threshold rule, ROC/DET, EER. The
   insightface rule (sklearn `roc_curve`, then the ROC point whose FPR is nearest the target, which
   may lie above it) is reported beside it (`insightface_tar_at_far`).
5. 1:N (`identification`): closed set: every probe template searched against G1 + G2 together (as
   insightface's ijb_1n.py does), CMC rank-1/5/10; open set: each gallery on its own, the probes
   whose subject is in the other gallery are non-mated, DIR at FPIR 0.01 / 0.1 by bob's rules
   (fvtool/identification/open_set.py). insightface's 1:N script thresholds at a share of non-mated
   *pairs* instead of non-mated *searches*; fvtool follows the IJB/NIST definition (per search).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fvtool.errors import InputError

VARIANTS = ("ijbb", "ijbc")
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class IjbSpec:
    """`ijbc:ROOT[,detector=0|1][,image_norm=0|1]` parsed."""

    variant: str
    root: Path
    detector: bool = True
    image_norm: bool = False

    @property
    def meta(self) -> Path:
        return self.root / "meta"

    def file(self, suffix: str) -> Path:
        return self.meta / f"{self.variant}_{suffix}"

    @property
    def galleries(self) -> tuple[str, str]:
        return ("S1", "S2") if self.variant == "ijbb" else ("G1", "G2")

    def describe_pooling(self) -> str:
        img = "L2-normalised image features" if self.image_norm else "raw image features"
        det = " x detector score" if self.detector else ""
        return (f"{img}{det} -> mean per media -> sum over the template's media -> L2-normalised "
                "(insightface ijb_11.py)")


def is_ijb_spec(spec: str) -> bool:
    return isinstance(spec, str) and spec.split(":", 1)[0].lower() in VARIANTS and ":" in spec


def parse_spec(spec: str) -> IjbSpec:
    variant, _, rest = spec.partition(":")
    variant = variant.lower()
    if variant not in VARIANTS or not rest:
        raise InputError(f"--protocol {spec!r}: write ijbb:ROOT or ijbc:ROOT (the folder holding meta/ and "
                         "loose_crop/)")
    root, *opts = rest.split(",")
    flags = {"detector": True, "image_norm": False}
    for o in opts:
        k, _eq, v = o.partition("=")
        if k not in flags or v not in ("0", "1"):
            raise InputError(f"--protocol {spec!r}: option {o!r}; options are detector=0|1 and image_norm=0|1")
        flags[k] = v == "1"
    s = IjbSpec(variant, Path(root), **flags)
    if not s.meta.is_dir():
        raise InputError(f"{s.root}: no meta/ folder; {variant.upper()} is read in the insightface release layout "
                         f"(meta/{variant}_face_tid_mid.txt, meta/{variant}_template_pair_label.txt, loose_crop/)")
    return s


# ---- readers ------------------------------------------------------------------------------------------

def _lines(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise InputError(f"{path} does not exist (IJB protocol file)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    return [ln.split() for ln in text.splitlines() if ln.strip()]


def _ints(path: Path, n_line: int, fields_: Sequence[str]) -> list[int]:
    try:
        return [int(f) for f in fields_]
    except ValueError:
        raise InputError(f"{path}:{n_line}: expected integers, got {' '.join(fields_)!r}") from None


@dataclass
class TemplateMedia:
    """Per image row: its name, template id and media id (meta/*_face_tid_mid.txt)."""

    names: list[str]
    tids: np.ndarray
    mids: np.ndarray


def read_tid_mid(path: Path) -> TemplateMedia:
    names, tids, mids = [], [], []
    for i, parts in enumerate(_lines(path), 1):
        if len(parts) != 3:
            raise InputError(f"{path}:{i}: expected `<image> <template id> <media id>`, got {' '.join(parts)!r}")
        t, m = _ints(path, i, parts[1:])
        names.append(parts[0])
        tids.append(t)
        mids.append(m)
    if not names:
        raise InputError(f"{path}: no rows")
    return TemplateMedia(names, np.asarray(tids, np.int64), np.asarray(mids, np.int64))


def read_landmarks(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, landmarks [N, 5, 2], detector scores [N]) from `*_name_5pts_score.txt`."""
    names, pts, scores = [], [], []
    for i, parts in enumerate(_lines(path), 1):
        if len(parts) != 12:
            raise InputError(f"{path}:{i}: expected `<image> x1 y1 ... x5 y5 <score>` (12 fields), got {len(parts)}")
        try:
            vals = [float(v) for v in parts[1:]]
        except ValueError:
            raise InputError(f"{path}:{i}: landmarks and score must be numbers") from None
        if not np.isfinite(vals).all():
            raise InputError(f"{path}:{i}: non-finite landmark or score")
        names.append(parts[0])
        pts.append(vals[:10])
        scores.append(vals[10])
    return names, np.asarray(pts, np.float64).reshape(-1, 5, 2), np.asarray(scores, np.float64)


def read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(template 1, template 2, label) from `*_template_pair_label.txt`; numpy parsing (15.7 M rows)."""
    if not path.is_file():
        raise InputError(f"{path} does not exist (IJB protocol file)")
    try:
        arr = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise InputError(f"{path}: expected rows `<template 1> <template 2> <0|1>` ({e})") from None
    if arr.shape[1] != 3 or len(arr) == 0:
        raise InputError(f"{path}: expected rows of 3 integers, got shape {arr.shape}")
    if not np.isin(arr[:, 2], (0, 1)).all():
        raise InputError(f"{path}: labels must be 0 or 1")
    return arr[:, 0], arr[:, 1], arr[:, 2].astype(bool)


def read_template_subjects(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Unique (template id, subject id) of a 1:N gallery/probe CSV (one row per image, with a header)."""
    if not path.is_file():
        raise InputError(f"{path} does not exist (IJB 1:N file)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise InputError(f"{path}: no rows after the header")
    seen: dict[int, int] = {}
    for i, r in enumerate(rows[1:], 2):
        if len(r) < 2:
            raise InputError(f"{path}:{i}: expected TEMPLATE_ID,SUBJECT_ID,...")
        t, s = _ints(path, i, r[:2])
        if seen.setdefault(t, s) != s:
            raise InputError(f"{path}:{i}: template {t} listed with subjects {seen[t]} and {s}")
    t = np.fromiter(seen.keys(), np.int64)
    order = np.argsort(t)
    return t[order], np.fromiter(seen.values(), np.int64)[order]


def read_image_table(spec: IjbSpec) -> tuple[TemplateMedia, np.ndarray, np.ndarray]:
    """The tid/mid table with its landmarks and detector scores, checked row by row (same order)."""
    tm = read_tid_mid(spec.file("face_tid_mid.txt"))
    lpath = spec.file("name_5pts_score.txt")
    names, pts, scores = read_landmarks(lpath)
    if names != tm.names:
        bad = next((i for i, (a, b) in enumerate(zip(names, tm.names, strict=False)) if a != b), min(len(names),
                                                                                                     len(tm.names)))
        raise InputError(f"{lpath} and {spec.file('face_tid_mid.txt')} must list the same images in the same order "
                         f"({len(names)} vs {len(tm.names)} rows; first difference at row {bad + 1})")
    return tm, pts, scores


# ---- alignment ------------------------------------------------------------------------------------------

@dataclass
class AlignIjbResult:
    out: Path
    n: int
    written: int
    reused: int


def align_ijb(spec: IjbSpec, out: Path, *, size: int = 112, threads: int = 2,
              show_progress: bool = True) -> AlignIjbResult:
    """Warp every loose crop onto the five-point template from its given landmarks; write a manifest.

    Resumable: crops already present are kept. The manifest (written last) records the detector score
    in `prob` and the 5 points in `landmarks`; the identity is `t<template id>` of the image's first row
    (the 1:1 protocol has no subject ids; the evaluation reads identities from the meta files).
    """
    from fvtool.align.geometry import warp_similarity
    from fvtool.atomic import atomic_path
    from fvtool.console import progress
    from fvtool.data.images import ImageReadError, load_rgb
    from fvtool.data.manifest import ManifestRow, write_manifest

    tm, pts, scores = read_image_table(spec)
    src = spec.root / "loose_crop"
    if not src.is_dir():
        raise InputError(f"{spec.root}: no loose_crop/ folder with the images")
    out = Path(out)
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise InputError(f"output {out} must not be inside the source images {src}")
    out.mkdir(parents=True, exist_ok=True)
    first: dict[str, int] = {}
    for i, n in enumerate(tm.names):
        first.setdefault(n, i)
    todo = list(first.items())

    def one(item: tuple[str, int]) -> tuple[ManifestRow, bool]:
        name, i = item
        key = str(Path(name).with_suffix(".png"))
        dest = out / key
        row = ManifestRow(identity=f"t{tm.tids[i]}", src=f"loose_crop/{name}", key=key, status="ok",
                          prob=float(scores[i]), landmarks=[float(v) for v in pts[i].ravel()])
        if dest.is_file():
            return row, False
        try:
            img = load_rgb(src / name)
        except ImageReadError as e:
            raise InputError(f"{src / name}: {e}") from None
        row.width, row.height = img.size
        crop = warp_similarity(img, pts[i], size)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            crop.save(tmp, format="PNG")
        return row, True

    rows: list[ManifestRow] = []
    written = 0
    with progress(disable=not show_progress) as bar, ThreadPoolExecutor(max(1, threads)) as pool:
        task = bar.add_task(f"aligning {spec.variant.upper()} crops", total=len(todo), info="")
        for row, new in pool.map(one, todo):
            rows.append(row)
            written += new
            bar.advance(task)
    write_manifest(out / "manifest.csv", rows)
    return AlignIjbResult(out, len(rows), written, len(rows) - written)


# ---- pooling and scoring ----------------------------------------------------------------------------------

@dataclass
class Templates:
    ids: np.ndarray  # template ids, ascending
    features: np.ndarray  # [T, D] unit-length float64
    n_images: np.ndarray  # images per template
    n_media: np.ndarray  # media per template


def pool_templates(x: np.ndarray, tids: np.ndarray, mids: np.ndarray, scores: np.ndarray | None = None, *,
                   image_norm: bool = False, only: np.ndarray | None = None) -> Templates:
    """Template features from image rows (module docstring, step 3); `only`: these template ids only.

    Vectorised: rows sorted by (template, media), media means by `np.add.reduceat`, template sums the
    same way, so IJB-C's 227 k images pool in one pass.
    """
    x = np.asarray(x, np.float64)
    if image_norm:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    if scores is not None:
        x = x * np.asarray(scores, np.float64)[:, None]
    tids = np.asarray(tids, np.int64)
    mids = np.asarray(mids, np.int64)
    sel = np.arange(len(tids)) if only is None else np.flatnonzero(np.isin(tids, only))
    order = sel[np.lexsort((mids[sel], tids[sel]))]
    t_s, m_s = tids[order], mids[order]
    new_media = np.ones(len(order), bool)
    new_media[1:] = (t_s[1:] != t_s[:-1]) | (m_s[1:] != m_s[:-1])
    ms = np.flatnonzero(new_media)
    media_sum = np.add.reduceat(x[order], ms, axis=0)
    media_n = np.diff(np.append(ms, len(order)))
    media = media_sum / media_n[:, None]
    media_t = t_s[ms]
    new_t = np.ones(len(ms), bool)
    new_t[1:] = media_t[1:] != media_t[:-1]
    ts = np.flatnonzero(new_t)
    tmpl = np.add.reduceat(media, ts, axis=0)
    norms = np.linalg.norm(tmpl, axis=1, keepdims=True)
    ids = media_t[ts]
    if (norms == 0).any():
        raise InputError(f"template {int(ids[np.flatnonzero(norms[:, 0] == 0)[0]])} pools to a zero vector "
                         "(all-zero embeddings or detector scores)")
    n_img = np.add.reduceat(media_n, ts)
    return Templates(ids, tmpl / norms, n_img.astype(np.int64), np.diff(np.append(ts, len(ms))).astype(np.int64))


def template_index(t: Templates, wanted: np.ndarray, what: str) -> np.ndarray:
    """Row of each wanted template id in `t` (InputError naming the first missing ones)."""
    pos = np.searchsorted(t.ids, wanted)
    pos = np.clip(pos, 0, len(t.ids) - 1)
    bad = t.ids[pos] != wanted
    if bad.any():
        miss = np.unique(wanted[bad])
        raise InputError(f"{what}: {len(miss)} template id(s) have no image in face_tid_mid.txt (first: "
                         f"{', '.join(map(str, miss[:5]))})")
    return pos


def insightface_tar_at_far(same: np.ndarray, scores: np.ndarray, fars: Sequence[float] = FARS) -> list[dict]:
    """insightface ijb_11.py's rule: sklearn `roc_curve` (intermediate points dropped), both arrays flipped,
    then for each target the first point minimising |FPR - target| (so the largest TPR among equal FPRs);
    that point's FPR may be above the target."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(same.astype(int), scores)
    fpr, tpr, thr = fpr[::-1], tpr[::-1], thr[::-1]
    out = []
    for f in fars:
        i = int(np.argmin(np.abs(fpr - f)))  # argmin returns the first minimum, as min() over (diff, index)
        t = float(thr[i]) if np.isfinite(thr[i]) else None  # sklearn's first point has threshold inf
        out.append({"far_target": f, "tar": float(tpr[i]), "fpr": float(fpr[i]), "threshold": t})
    return out


# ---- the 1:1 protocol on an embeddings file ------------------------------------------------------------------

@dataclass
class ImageFeatures:
    """The IJB image table mapped onto an embeddings file's rows."""

    tm: TemplateMedia
    rows: np.ndarray  # embedding row of each table row
    scores: np.ndarray  # detector score of each table row


def image_features(spec: IjbSpec, keys: list[str]) -> ImageFeatures:
    from fvtool.protocols.model import resolve_keys

    tm, _pts, scores = read_image_table(spec)
    uniq, inv = np.unique(np.asarray(tm.names), return_inverse=True)
    rows = resolve_keys(list(uniq), keys, what=f"{spec.variant.upper()} images ({spec.file('face_tid_mid.txt')})")
    return ImageFeatures(tm, rows[inv], scores)


def pooled(spec: IjbSpec, emb: np.ndarray, f: ImageFeatures, only: np.ndarray | None = None) -> Templates:
    return pool_templates(emb[f.rows], f.tm.tids, f.tm.mids, f.scores if spec.detector else None,
                          image_norm=spec.image_norm, only=only)


@dataclass
class VerificationSet:
    """What the verify stage needs: template features as an embeddings set and the pairs as a protocol."""

    embeddings: Any  # EmbeddingSet of template features (keys `template:<id>`)
    protocol: Any  # Protocol kind pairs over those keys
    preset: Any  # Preset-like: name, far_targets, kfold
    info: dict[str, Any] = field(default_factory=dict)


def verification_set(spec_text: str, es: Any) -> VerificationSet:
    """Pool `es` (image embeddings) into templates and build the template-pair protocol."""
    from fvtool.data.embeddings import EmbeddingSet
    from fvtool.protocols.model import Protocol
    from fvtool.protocols.presets import Preset

    spec = parse_spec(spec_text)
    feats = image_features(spec, es.keys)
    t1, t2, same = read_pairs(spec.file("template_pair_label.txt"))
    used = np.unique(np.concatenate([t1, t2]))
    t = pooled(spec, es.embeddings, feats, only=used)
    template_index(t, used, str(spec.file("template_pair_label.txt")))
    keys = [f"template:{int(i)}" for i in t.ids]
    tset = EmbeddingSet(t.features.astype(np.float32), keys, keys, ["ok"] * len(keys),
                        {**es.attrs, "ijb_pooling": spec.describe_pooling()})
    a = template_index(t, t1, "pairs")
    b = template_index(t, t2, "pairs")
    # each template is its own "identity": the protocol's labels come from the pair file, not from names
    proto = Protocol(kind="pairs", name=spec.variant, images=keys, identities=keys, a=a, b=b, same=same,
                     fold=np.zeros(len(a), np.int64), source=f"{spec.variant}:{spec.root.resolve()}")
    preset = Preset(name=spec.variant, description=f"{spec.variant.upper()} 1:1 template verification",
                    kind="pairs", far_targets=(1e-4, 1e-6, 1e-5, 1e-3, 1e-2, 1e-1), kfold=False)
    info = {"variant": spec.variant, "root": str(spec.root.resolve()), "pooling": spec.describe_pooling(),
            "detector_weighted": spec.detector, "image_norm": spec.image_norm, "images": len(feats.tm.names),
            "templates": len(t.ids), "pairs": len(a), "genuine": int(same.sum()), "impostor": int((~same).sum()),
            "media_per_template_mean": float(t.n_media.mean()), "images_per_template_mean": float(t.n_images.mean()),
            }
    return VerificationSet(tset, proto, preset, info)


# ---- 1:N -------------------------------------------------------------------------------------------------------

def identification(spec_text: str, es: Any, fpirs: Sequence[float], ranks: Sequence[int]) -> list[dict[str, Any]]:
    """Closed-set CMC on G1+G2 and open-set DIR@FPIR per gallery (module docstring, step 5).

    Returns the metrics parts of `fvtool-openset` JSONs: [closed set G1+G2, open set G1, open set G2].
    """
    from fvtool.identification.open_set import search_result, search_scores

    spec = parse_spec(spec_text)
    feats = image_features(spec, es.keys)
    g_names = spec.galleries
    gals = [read_template_subjects(spec.file(f"1N_gallery_{g}.csv")) for g in g_names]
    p_t, p_s = read_template_subjects(spec.file("1N_probe_mixed.csv"))
    all_t = np.unique(np.concatenate([gals[0][0], gals[1][0], p_t]))
    t = pooled(spec, es.embeddings, feats, only=all_t)
    probes = t.features[template_index(t, p_t, "probe_mixed")]
    results = []
    parts = [("+".join(g_names), np.concatenate([gals[0][0], gals[1][0]]), np.concatenate([gals[0][1], gals[1][1]]))]
    parts += [(g, gt, gs) for g, (gt, gs) in zip(g_names, gals, strict=True)]
    for name, gt, gs in parts:
        if len(np.unique(gs)) != len(gs):
            raise InputError(f"{spec.variant} gallery {name}: a subject has several gallery templates; the 1:N "
                             "protocol enrols one template per subject")
        col = {int(s): j for j, s in enumerate(gs)}
        mates = np.asarray([col.get(int(s), -1) for s in p_s], np.int64)
        scores = search_scores(probes, t.features[template_index(t, gt, f"gallery {name}")])
        r = search_result(scores, mates, fpirs, ranks)
        r["protocol"] = {"task": "open-set identification", "name": f"{spec.variant}-1N-{name}",
                         "source": spec.variant, "root": str(spec.root.resolve()), "gallery": name,
                         "probe": "mixed", "pooling": spec.describe_pooling(), "scoring": "cosine",
                         "closed_set": "+" in name}
        results.append(r)
    return results


# ---- a miniature set in the published layout -------------------------------------------------------------------

def write_miniature(identity_root: Path, out: Path, *, variant: str = "ijbc", subjects: int = 8,
                    templates_per_subject: int = 3, seed: int = 0) -> dict[str, int]:
    """A small IJB-layout set from an identity folder (e.g. data/lfw-subset), for tests and benchmarks.

    Each subject's images are dealt into `templates_per_subject` templates of one to three media
    (a media of several images stands for a video's frames). The landmarks are the five-point template
    placed at the centre of the 250 x 250 LFW frame with seeded jitter (LFW ships no landmarks; the
    alignment still runs a real similarity warp); detector scores are uniform in [0.5, 1]. All template
    pairs are listed for 1:1; 1:N enrols the first template of even subjects in gallery 1, of odd ones
    in gallery 2, and probes with the other templates.
    """
    from fvtool.align.geometry import ARCFACE_TEMPLATE_112

    rng = np.random.default_rng(seed)
    people = sorted(p for p in Path(identity_root).iterdir() if p.is_dir() and len(list(p.iterdir())) >= 6)
    if len(people) < subjects:
        raise InputError(f"{identity_root}: only {len(people)} identities with >= 6 images; need {subjects}")
    chosen = [people[i] for i in sorted(rng.choice(len(people), subjects, replace=False))]
    (out / "loose_crop").mkdir(parents=True, exist_ok=True)
    (out / "meta").mkdir(parents=True, exist_ok=True)
    tid_mid, lmk, templates = [], [], []  # templates: (tid, subject)
    n_img, tid, mid = 0, 0, 0
    for s, person in enumerate(chosen, start=1):
        files = sorted(person.iterdir())[:6 + (s % 3)]
        groups = np.array_split(np.arange(len(files)), templates_per_subject)
        for g in groups:
            tid += 1
            templates.append((tid, s))
            cuts = np.sort(rng.choice(np.arange(1, len(g)), size=min(len(g) - 1, int(rng.integers(0, 2))),
                                      replace=False)) if len(g) > 1 else []
            for media in np.split(g, cuts):
                mid += 1
                for j in media:
                    n_img += 1
                    name = f"{n_img}.jpg"
                    shutil.copy(files[j], out / "loose_crop" / name)
                    pts = ARCFACE_TEMPLATE_112 * 1.1 + (125 - 56 * 1.1) + rng.normal(0, 2.0, (5, 2))
                    tid_mid.append(f"{name} {tid} {mid}")
                    lmk.append(" ".join([name, *(f"{v:.3f}" for v in pts.ravel()), f"{rng.uniform(0.5, 1):.4f}"]))
    v = variant
    (out / "meta" / f"{v}_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (out / "meta" / f"{v}_name_5pts_score.txt").write_text("\n".join(lmk) + "\n")
    pairs = [f"{a} {b} {int(sa == sb)}" for i, (a, sa) in enumerate(templates) for b, sb in templates[i + 1:]]
    (out / "meta" / f"{v}_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    g1, g2 = ("S1", "S2") if v == "ijbb" else ("G1", "G2")
    firsts = {}
    for t, s in templates:
        firsts.setdefault(s, t)
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    names_of = {}
    for line in tid_mid:
        name, t, _m = line.split()
        names_of.setdefault(int(t), []).append(name)

    def rows(ts: list[tuple[int, int]]) -> str:
        return header + "".join(f"{t},{s},{n}\n" for t, s in ts for n in names_of[t])

    (out / "meta" / f"{v}_1N_gallery_{g1}.csv").write_text(rows([(firsts[s], s) for s in firsts if s % 2 == 0]))
    (out / "meta" / f"{v}_1N_gallery_{g2}.csv").write_text(rows([(firsts[s], s) for s in firsts if s % 2 == 1]))
    (out / "meta" / f"{v}_1N_probe_mixed.csv").write_text(rows([(t, s) for t, s in templates if firsts[s] != t]))
    return {"images": n_img, "templates": tid, "media": mid, "pairs": len(pairs), "subjects": subjects}
