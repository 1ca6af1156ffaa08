"""The align stage: geometry against formulas and facenet-pytorch, real MTCNN on real LFW faces,
odd and broken inputs end to end, the manifest, --on-fail, and resume after an interrupted run.

Speed: MTCNN costs ~20 ms per 250x250 image on an idle core (several times more on a loaded
machine), so the tests use a few real images, one shared detector and a minimum face size of 40 px
(fewer pyramid levels; LFW faces are ~100 px)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fvtool.align.detector import DetectorConfig, Face, FaceDetector, select_face
from fvtool.align.geometry import (
    ARCFACE_TEMPLATE_112,
    apply_affine,
    center_crop,
    crop_box,
    similarity_matrix,
    template,
    umeyama,
    warp_similarity,
)
from fvtool.align.stage import CONFIG_NAME, AlignOptions, align_folder
from fvtool.atomic import TMP_MARK
from fvtool.data.images import load_rgb
from fvtool.data.manifest import MANIFEST_NAME, read_manifest
from fvtool.errors import EXIT_PARTIAL, InputError
from fvtool.workspace import Workspace

MIN_FACE = 40


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(DetectorConfig(min_face_size=MIN_FACE))


def _opts(**kw) -> AlignOptions:
    base = {"min_face_size": MIN_FACE, "show_progress": False, "batch_size": 4}
    base.update(kw)
    return AlignOptions(**base)


def _copy_subset(embedded: Path, dst: Path, identities: int, per_identity: int) -> Path:
    for ident in sorted(p.name for p in embedded.iterdir() if p.is_dir())[:identities]:
        (dst / ident).mkdir(parents=True)
        for f in sorted((embedded / ident).glob("*.jpg"))[:per_identity]:
            shutil.copy2(f, dst / ident / f.name)
    return dst


# ---- geometry -------------------------------------------------------------------------------

def test_umeyama_recovers_a_known_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, t = 0.3, 0.7, np.array([12.0, -5.0])
    r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * r).T + t
    m = umeyama(src, dst)
    assert np.allclose(m[:, :2], scale * r, atol=1e-10) and np.allclose(m[:, 2], t, atol=1e-8)
    # noisy points: the least-squares solution beats the exact transform's residual
    noisy = dst + rng.normal(0, 1.0, dst.shape)
    m2 = umeyama(src, noisy)
    assert np.sum((apply_affine(m2, src) - noisy) ** 2) <= np.sum((dst - noisy) ** 2) + 1e-9


def test_umeyama_never_reflects() -> None:
    src = ARCFACE_TEMPLATE_112.copy()
    mirrored = src * np.array([-1.0, 1.0])
    m = umeyama(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0  # rotation + scale only


def test_template_scales_with_size() -> None:
    assert np.allclose(template(112), ARCFACE_TEMPLATE_112)
    assert np.allclose(template(64), ARCFACE_TEMPLATE_112 * 64 / 112)
    # eyes of the template are level to 0.2 px: what "eyes level" means in similarity mode
    assert abs(ARCFACE_TEMPLATE_112[0, 1] - ARCFACE_TEMPLATE_112[1, 1]) < 0.2


@pytest.mark.parametrize(("side", "size"), [(400, 112), (1200, 64), (300, 160)])
def test_warp_puts_marked_landmarks_on_the_template(side: int, size: int) -> None:
    """Dots drawn at 5 landmark positions land where the matrix predicts (sub-pixel), including
    through the integer pre-reduction used for faces much larger than the output."""
    pts = np.array([[0.35, 0.40], [0.65, 0.38], [0.5, 0.55], [0.38, 0.72], [0.62, 0.73]]) * side
    img = np.zeros((side, side, 3), dtype=np.uint8)
    r = max(2, side // 80)
    yy, xx = np.mgrid[0:side, 0:side]
    for x, y in pts:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = 255
    out = np.asarray(warp_similarity(Image.fromarray(img), pts, size))[..., 0].astype(float)
    predicted = apply_affine(similarity_matrix(pts, size), pts)
    from scipy import ndimage

    labels, n = ndimage.label(out > 30)
    assert n == 5
    found = np.array(ndimage.center_of_mass(out, labels, range(1, 6)))[:, ::-1]
    for p in predicted:
        assert np.min(np.linalg.norm(found - p, axis=1)) < 0.5


def test_center_crop_is_the_central_square() -> None:
    a = np.zeros((100, 200, 3), dtype=np.uint8)
    a[22:78, 72:128] = 200  # the central 50x50 square plus the 3-px support of the antialiasing filter
    out = np.asarray(center_crop(Image.fromarray(a), 20, 0.5))
    assert out.shape == (20, 20, 3) and (out == 200).all()
    a[22:78, 72:128] = 0
    a[25:75, 75:125] = 200  # exactly the central square: only the outermost output pixels see the dark
    out = np.asarray(center_crop(Image.fromarray(a), 20, 0.5))
    assert (out[1:-1, 1:-1] == 200).all() and out.mean() > 180


def test_select_face_policies() -> None:
    def face(x1, y1, x2, y2, p):
        return Face(np.array([x1, y1, x2, y2], float), p, np.zeros((5, 2)))

    big_corner = face(0, 0, 120, 120, 0.95)
    small_centre = face(90, 90, 160, 160, 0.99)
    confident = face(180, 180, 240, 240, 0.9999)
    faces = [big_corner, small_centre, confident]
    assert select_face(faces, (250, 250), "largest") is big_corner
    assert select_face(faces, (250, 250), "center") is small_centre
    assert select_face(faces, (250, 250), "confident") is confident
    assert select_face([], (250, 250), "center") is None
    with pytest.raises(InputError):
        select_face(faces, (250, 250), "random")


# ---- real MTCNN -----------------------------------------------------------------------------

def test_detector_matches_facenet_mtcnn(embedded_data: Path, detector: FaceDetector) -> None:
    from facenet_pytorch import MTCNN

    img = load_rgb(embedded_data / "Adrien_Brody" / "Adrien_Brody_0001.jpg")
    ref = MTCNN(min_face_size=MIN_FACE, select_largest=True)
    boxes, probs, points = ref.detect(img, landmarks=True)
    faces = detector.detect([img])[0]
    assert len(faces) == len(boxes) >= 1
    best = select_face(faces, img.size, "largest")
    assert np.allclose(best.box, boxes[0].astype(np.float64), atol=1e-3)
    assert np.allclose(best.landmarks, points[0].astype(np.float64), atol=1e-3)
    assert abs(best.prob - float(probs[0])) < 1e-6


def test_crop_mode_is_pixel_identical_to_facenet_extract_face(embedded_data: Path, detector: FaceDetector) -> None:
    from facenet_pytorch.models.utils.detect_face import extract_face

    img = load_rgb(embedded_data / "Adrien_Brody" / "Adrien_Brody_0001.jpg")
    box = select_face(detector.detect([img])[0], img.size, "center").box
    off_edge = box - np.array([110.0, 90.0, 0.0, 0.0])  # partly outside the image: clipped like facenet
    for b, size, margin in ((box, 160, 14), (box, 112, 0), (off_edge, 64, 8)):
        ours = np.asarray(crop_box(img, b, size, margin), dtype=np.float32)
        theirs = extract_face(img, b, size, margin).permute(1, 2, 0).numpy()
        assert np.array_equal(ours, theirs)


def test_large_images_are_downscaled_for_detection_and_mapped_back(embedded_data: Path,
                                                                   detector: FaceDetector) -> None:
    img = load_rgb(embedded_data / "Adrien_Brody" / "Adrien_Brody_0001.jpg")
    big = img.resize((1000, 1000), Image.Resampling.BICUBIC)
    small_det = FaceDetector(DetectorConfig(min_face_size=MIN_FACE, max_detect_side=250))
    ref = select_face(detector.detect([img])[0], img.size, "center")
    got = select_face(small_det.detect([big])[0], big.size, "center")
    # exactly the detection on the downscaled image, mapped back (pixel centres map exactly)
    # (the minimum face size is in source pixels: 40 / 4 = 10, clamped to MTCNN's 12-px cell)
    down = big.resize((250, 250), Image.Resampling.BILINEAR, reducing_gap=2.0)
    on_down = select_face(FaceDetector(DetectorConfig(min_face_size=12)).detect([down])[0], down.size, "center")
    assert np.allclose(got.landmarks, (on_down.landmarks + 0.5) * 4 - 0.5, atol=1e-4)
    assert np.allclose(got.box, (on_down.box + 0.5) * 4 - 0.5, atol=1e-4)
    # and close to the detection on the original 250-px image, scaled (different resampling only)
    expected = (ref.landmarks + 0.5) * 4 - 0.5
    assert np.abs(got.landmarks - expected).max() < 15.0  # 4% of the ~360-px face
    # the similarity crop is taken from the full-resolution image and matches the small one's
    a = np.asarray(warp_similarity(img, ref.landmarks, 112), dtype=float)
    b = np.asarray(warp_similarity(big, got.landmarks, 112), dtype=float)
    assert np.abs(a - b).mean() < 6.0


def test_similarity_mode_eyes_level_at_template_height(embedded_data: Path, tmp_path: Path,
                                                       detector: FaceDetector) -> None:
    src = _copy_subset(embedded_data, tmp_path / "src", identities=2, per_identity=4)
    summary = align_folder(src, tmp_path / "out", _opts(), detector=detector)
    rows = read_manifest(tmp_path / "out" / MANIFEST_NAME)
    assert summary.counts["ok"] == len(rows) == 8
    t = template(112)
    eye_dy, eye_dev = [], []
    crops = [load_rgb(tmp_path / "out" / r.key) for r in rows]
    # the least-squares transform puts the source eyes near the template eyes
    for r in rows:
        mapped = apply_affine(similarity_matrix(np.array(r.landmarks).reshape(5, 2), 112),
                              np.array(r.landmarks).reshape(5, 2))
        assert np.abs(mapped[:2] - t[:2]).max() < 6.0
    # independent check on the written pixels: detect again on the aligned crops
    for faces in detector.detect(crops):
        lm = select_face(faces, (112, 112), "center").landmarks
        eye_dy.append(abs(lm[0, 1] - lm[1, 1]))
        eye_dev.append(np.abs(lm[:2] - t[:2]).max())
    assert np.median(eye_dy) < 2.5, eye_dy  # eyes level (MTCNN landmark noise is ~1-2 px)
    assert np.median(eye_dev) < 5.0, eye_dev  # and at the template's height and width


# ---- stage: odd inputs, bad files, manifest, CLI -------------------------------------------

@pytest.fixture(scope="module")
def odd_folder(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One identity folder with each odd image type made from real faces, plus broken files."""
    root = tmp_path_factory.mktemp("odd") / "src"
    d = root / "Odd_Person"
    d.mkdir(parents=True)
    faces = sorted((embedded_data / "Alejandro_Toledo").glob("*.jpg"))
    f = [load_rgb(p) for p in faces[:10]]
    f[0].convert("L").save(d / "grey.png")
    f[1].convert("L").save(d / "grey.pgm")
    rgba = f[2].convert("RGBA")
    a = np.full((250, 250), 255, np.uint8)
    a[:, :30] = 0
    rgba.putalpha(Image.fromarray(a))
    rgba.save(d / "alpha.png")
    f[3].quantize(255).save(d / "palette.gif")
    f[4].convert("CMYK").save(d / "cmyk.jpg", quality=92)
    Image.fromarray(np.asarray(f[5].convert("L"), np.uint16) * 257).save(d / "deep16.png")
    f[6].save(d / "bitmap.bmp")
    f[7].save(d / "tiff.tif")
    f[8].save(d / "web.webp", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    f[9].transpose(Image.Transpose.ROTATE_90).save(d / "rotated.jpg", quality=92, exif=exif)
    f[0].save(d / "same.png")  # same stem as same.jpg: output names must not collide
    f[1].save(d / "same.jpg")
    (d / "zero.jpg").write_bytes(b"")
    good = (d / "same.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "readme.txt").write_text("not an image")
    return root


def test_odd_inputs_and_bad_files_through_the_cli(odd_folder: Path, tmp_path: Path) -> None:
    from fvtool.cli import main

    with pytest.raises(SystemExit) as ei:
        main(["align", str(odd_folder), "--min-face-size", str(MIN_FACE), "--quiet", "--threads", "1",
              "--size", "96", "--batch-size", "8"])
    assert ei.value.code == EXIT_PARTIAL  # some files unreadable -> 4, but everything else written
    dst = Workspace.current().dir("align") / "src"  # default output: <workspace>/aligned/<SRC name>
    assert Workspace.current().latest("align") == dst.resolve()
    rows = {Path(r.src).name: r for r in read_manifest(dst / MANIFEST_NAME)}
    assert len(rows) == 15  # one row per file, the text file included
    images = ["grey.png", "grey.pgm", "alpha.png", "palette.gif", "cmyk.jpg", "deep16.png", "bitmap.bmp",
              "tiff.tif", "web.webp", "rotated.jpg", "same.png", "same.jpg"]
    for name in images:
        r = rows[name]
        assert r.status == "ok", (name, r.reason)  # every decodable type gave a detected face
        assert r.identity == "Odd_Person" and r.n_faces >= 1 and r.prob > 0.9
        out = Image.open(dst / r.key)
        assert out.size == (96, 96) and out.mode == "RGB" and out.format == "JPEG"
        # landmarks lie inside the box, the box inside the image (source pixels)
        lm = np.array(r.landmarks).reshape(5, 2)
        x1, y1, x2, y2 = r.box
        assert (lm[:, 0] > x1).all() and (lm[:, 0] < x2).all() and (lm[:, 1] > y1).all() and (lm[:, 1] < y2).all()
        assert -5 < x1 < x2 < r.width + 5 and -5 < y1 < y2 < r.height + 5
    assert (rows["rotated.jpg"].width, rows["rotated.jpg"].height) == (250, 250)
    eyes = np.array(rows["rotated.jpg"].landmarks).reshape(5, 2)
    assert eyes[2, 1] > eyes[0, 1] + 10  # upright after EXIF: nose below the eyes
    assert rows["same.png"].key == "Odd_Person/same.png.jpg" and rows["same.jpg"].key == "Odd_Person/same.jpg.jpg"
    assert rows["grey.png"].key == "Odd_Person/grey.png.jpg" and rows["grey.pgm"].key == "Odd_Person/grey.pgm.jpg"
    assert rows["alpha.png"].key == "Odd_Person/alpha.jpg"  # no collision: plain stem + output extension
    for name, reason in (("zero.jpg", "0 bytes"), ("truncated.jpg", "truncated"), ("readme.txt", "not an image")):
        r = rows[name]
        assert r.status == "unreadable" and reason in r.reason and r.key == "" and r.prob is None
    cfg = json.loads((dst / CONFIG_NAME).read_text())
    assert cfg["complete"] and cfg["summary"]["counts"] == {"ok": 12, "fallback": 0, "no_face": 0,
                                                             "unreadable": 3, "error": 0}
    assert not list(dst.rglob(f"{TMP_MARK}*"))


def test_on_fail_skip_and_center_crop(tmp_path: Path, detector: FaceDetector, embedded_data: Path) -> None:
    src = tmp_path / "src" / "Nobody"
    src.mkdir(parents=True)
    # a real photo with the face removed: the top-left background corner of an LFW image, enlarged
    corner = load_rgb(embedded_data / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg").crop((0, 0, 60, 60))
    corner.resize((250, 250), Image.Resampling.BICUBIC).save(src / "background.png")
    out_skip = tmp_path / "skip"
    s = align_folder(tmp_path / "src", out_skip, _opts(on_fail="skip"), detector=detector)
    (row,) = read_manifest(out_skip / MANIFEST_NAME)
    assert s.counts["no_face"] == 1 and row.status == "no_face" and row.key == "" and "no face" in row.reason
    assert not list((out_skip / "Nobody").glob("*")) if (out_skip / "Nobody").exists() else True
    out_cc = tmp_path / "cc"
    align_folder(tmp_path / "src", out_cc, _opts(on_fail="center-crop", center_crop_fraction=0.5), detector=detector)
    (row,) = read_manifest(out_cc / MANIFEST_NAME)
    assert row.status == "fallback" and row.key == "Nobody/background.jpg" and "centre crop" in row.reason
    written = np.asarray(load_rgb(out_cc / row.key), float)
    expected = np.asarray(center_crop(load_rgb(src / "background.png"), 112, 0.5), float)
    assert np.abs(written - expected).mean() < 2.0  # JPEG of exactly that centre crop
    # switching to --on-fail skip on the same output redoes the row and removes the stale crop
    s = align_folder(tmp_path / "src", out_cc, _opts(on_fail="skip", center_crop_fraction=0.5), detector=detector)
    (row,) = read_manifest(out_cc / MANIFEST_NAME)
    assert row.status == "no_face" and not (out_cc / "Nobody" / "background.jpg").exists()


def test_a_failing_image_becomes_an_error_row_and_the_run_goes_on(tmp_path: Path, embedded_data: Path,
                                                                  detector: FaceDetector) -> None:
    src = _copy_subset(embedded_data, tmp_path / "src", identities=1, per_identity=2)
    ident = next(src.iterdir())
    load_rgb(next(ident.glob("*.jpg"))).resize((251, 250)).save(ident / "odd_size.png")

    class Flaky:
        config = detector.config

        def detect(self, images):
            if any(im.size == (251, 250) for im in images):
                raise RuntimeError("simulated MTCNN failure")
            return detector.detect(images)

    s = align_folder(src, tmp_path / "out", _opts(), detector=Flaky())
    rows = {Path(r.src).name: r for r in read_manifest(tmp_path / "out" / MANIFEST_NAME)}
    assert s.counts["ok"] == 2 and s.counts["error"] == 1 and s.failed == 1
    assert rows["odd_size.png"].status == "error" and "simulated MTCNN failure" in rows["odd_size.png"].reason


def test_refuses_output_inside_source_and_mismatched_resume(tmp_path: Path, embedded_data: Path,
                                                            detector: FaceDetector) -> None:
    src = _copy_subset(embedded_data, tmp_path / "src", identities=1, per_identity=1)
    with pytest.raises(InputError, match="inside the source"):
        align_folder(src, src / "aligned", _opts(), detector=detector)
    align_folder(src, tmp_path / "out", _opts(), detector=detector)
    with pytest.raises(InputError, match="size: 112 -> 64"):
        align_folder(src, tmp_path / "out", _opts(size=64), detector=detector)
    s = align_folder(src, tmp_path / "out", _opts(size=64, resume=False), detector=detector)
    assert s.processed == 1 and Image.open(tmp_path / "out" / read_manifest(tmp_path / "out" / MANIFEST_NAME)[0].key
                                           ).size == (64, 64)


def test_reuse_detections_gives_the_other_mode_without_mtcnn(tmp_path: Path, embedded_data: Path,
                                                            detector: FaceDetector,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src = _copy_subset(embedded_data, tmp_path / "src", identities=1, per_identity=3)
    (src / "Bad").mkdir()
    (src / "Bad" / "zero.jpg").write_bytes(b"")
    align_folder(src, tmp_path / "sim", _opts(), detector=detector)
    with pytest.raises(InputError, match="keep"):
        align_folder(src, tmp_path / "crop", _opts(mode="crop", keep="largest", reuse_detections=tmp_path / "sim"))

    def no_mtcnn(*a, **k):
        raise AssertionError("MTCNN must not run when every detection is reused")

    monkeypatch.setattr("fvtool.align.stage.FaceDetector", no_mtcnn)
    s = align_folder(src, tmp_path / "crop", _opts(mode="crop", size=64, margin=8, reuse_detections=tmp_path / "sim"))
    assert s.counts["ok"] == 3 and s.counts["unreadable"] == 1
    sim = {r.src: r for r in read_manifest(tmp_path / "sim" / MANIFEST_NAME)}
    for r in read_manifest(tmp_path / "crop" / MANIFEST_NAME):
        assert (r.status, r.box, r.landmarks, r.n_faces) == (sim[r.src].status, sim[r.src].box,
                                                             sim[r.src].landmarks, sim[r.src].n_faces)
        if r.status == "ok":
            want = np.asarray(crop_box(load_rgb(src / r.src), np.array(r.box), 64, 8), float)
            assert np.abs(np.asarray(load_rgb(tmp_path / "crop" / r.key), float) - want).mean() < 2.0
    assert json.loads((tmp_path / "crop" / CONFIG_NAME).read_text())["detections_from"].endswith("sim")


# ---- resume ---------------------------------------------------------------------------------

class _Killed(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path: Path, embedded_data: Path,
                                                            detector: FaceDetector) -> None:
    src = _copy_subset(embedded_data, tmp_path / "src", identities=3, per_identity=4)
    ref_dst, dst = tmp_path / "ref", tmp_path / "resumed"
    ref = align_folder(src, ref_dst, _opts(), detector=detector)
    assert ref.processed == 12 and ref.counts["ok"] == 12

    seen: list[str] = []

    def kill_after_6(row) -> None:
        seen.append(row.src)
        if len(seen) == 6:
            raise _Killed

    with pytest.raises(_Killed):
        align_folder(src, dst, _opts(), detector=detector, on_row=kill_after_6)
    partial = read_manifest(dst / MANIFEST_NAME)
    assert len(partial) == 6  # the manifest checkpoint lists exactly the finished rows
    written_before = {p.relative_to(dst).as_posix() for p in dst.rglob("*.jpg")}
    assert len(written_before) >= 6  # images 7-8 may be on disk without a row: they get redone
    assert not json.loads((dst / CONFIG_NAME).read_text())["complete"]
    # what a hard kill leaves: a temporary in the middle of a write, and a finished output whose row is missing
    stale = dst / partial[0].identity / f"{TMP_MARK}abc123.jpg"
    stale.write_bytes(b"half a jpeg")
    (dst / partial[1].key).unlink()  # an output lost after its row was written: redone too

    resumed = align_folder(src, dst, _opts(), detector=detector)
    assert resumed.removed_temporaries == 1 and not list(dst.rglob(f"{TMP_MARK}*"))
    assert resumed.reused == 5 and resumed.processed == 7
    got, want = read_manifest(dst / MANIFEST_NAME), read_manifest(ref_dst / MANIFEST_NAME)
    assert [(r.src, r.key, r.status, r.identity, r.n_faces) for r in got] == \
        [(r.src, r.key, r.status, r.identity, r.n_faces) for r in want]
    for a, b in zip(got, want, strict=True):
        # batches differ after a resume; MTCNN's float results may differ in the last bits
        assert np.allclose(a.landmarks, b.landmarks, atol=0.011) and np.allclose(a.box, b.box, atol=0.011)
        pa = np.asarray(Image.open(dst / a.key), np.int16)
        pb = np.asarray(Image.open(ref_dst / b.key), np.int16)
        assert np.abs(pa - pb).max() <= 2 and (pa != pb).mean() < 0.01
    cfg = json.loads((dst / CONFIG_NAME).read_text())
    assert cfg["complete"] and cfg["summary"]["counts"]["ok"] == 12

    # a third run has nothing left to do
    again = align_folder(src, dst, _opts(), detector=detector)
    assert again.processed == 0 and again.reused == 12
