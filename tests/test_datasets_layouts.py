"""Publisher layouts read into ImageSets (VGGFace2, CASIA-WebFace, MEDS-II, the course layout), their bad
entries, and align/train/embed/pairs end to end on a .rec and on a VGGFace2 folder.

Every fixture is built here from a few real LFW images of the embedded subset (tiny, a few identities).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fvtool.align.geometry import warp_similarity
from fvtool.cli import main
from fvtool.data.dataset import load_image_set
from fvtool.data.embeddings import EmbeddingSet, read_embeddings, write_embeddings
from fvtool.data.manifest import read_manifest
from fvtool.errors import InputError
from fvtool.protocols.pair_list import pair_list_protocol, read_pair_list
from fvtool.protocols.presets import read_any_protocol

pytestmark = pytest.mark.usefixtures("one_thread")

#: approximate 5 landmarks of a 250x250 LFW deep-funneled image (the face is centred), halved for 125 px
LANDMARKS_125 = np.array([[50.0, 57.5], [75.0, 57.5], [62.5, 70.0], [52.5, 82.5], [72.5, 82.5]])


def _lfw(embedded: Path, identities: int, per: int) -> list[tuple[str, list[Path]]]:
    names = sorted(p.name for p in embedded.iterdir() if p.is_dir())[:identities]
    return [(n, sorted((embedded / n).glob("*.jpg"))[:per]) for n in names]


def _vggface2(embedded: Path, root: Path, identities: int = 4, per: int = 3) -> Path:
    """<root>/train/n00000k/000j_01.jpg (125 px), train_list.txt, bb_landmark/ with one row per image except
    the very first (no landmarks: MTCNN's job), plus a landmark row for a missing file and a bad list line."""
    part = root / "train"
    lines, lm, bb = [], ['"NAME_ID","P1X","P1Y","P2X","P2Y","P3X","P3Y","P4X","P4Y","P5X","P5Y"'], \
        ['"NAME_ID","X","Y","W","H"']
    for k, (_, files) in enumerate(_lfw(embedded, identities, per)):
        ident = f"n{k + 1:06d}"
        (part / ident).mkdir(parents=True)
        for j, f in enumerate(files):
            name = f"{ident}/{j + 1:04d}_01"
            Image.open(f).resize((125, 125), Image.Resampling.BILINEAR).save(part / f"{name}.jpg", quality=92)
            lines.append(f"{name}.jpg")
            if (k, j) != (0, 0):
                lm.append(f'"{name}",' + ",".join(f"{v:.1f}" for v in LANDMARKS_125.reshape(-1)))
                bb.append(f'"{name}",30,30,65,75')
    lm.append('"n000001/9999_01",' + ",".join(["50"] * 10))  # a landmark row for a missing file
    lines.append("n000001/0042_01.jpg")  # a listed file that is missing
    (root / "train_list.txt").write_text("\n".join(lines) + "\n")
    (root / "bb_landmark").mkdir()
    (root / "bb_landmark" / "loose_landmark_train.csv").write_text("\n".join(lm) + "\n")
    (root / "bb_landmark" / "loose_bb_train.csv").write_text("\n".join(bb) + "\n")
    return part


# ---- VGGFace2 ----------------------------------------------------------------------------------

def test_vggface2_reads_lists_and_landmarks_and_reports_bad_rows(embedded_data: Path, tmp_path: Path) -> None:
    part = _vggface2(embedded_data, tmp_path / "vgg")
    images = load_image_set(part)
    assert images.source == "vggface2" and len(images) == 12 and len(set(images.identities)) == 4
    reasons = sorted(p.reason for p in images.problems)
    assert len(reasons) == 2
    assert "listed file n000001/0042_01.jpg is missing" in reasons[0]
    assert "loose_landmark_train.csv row for a missing file n000001/9999_01.jpg" in reasons[1]
    assert np.isnan(images.faces[0]).all()  # n000001/0001_01: no rows
    assert np.allclose(images.faces[1, 4:], LANDMARKS_125.reshape(-1)) and np.allclose(images.faces[1, :4],
                                                                                          [30, 30, 95, 105])
    with pytest.raises(InputError, match="point fvtool at one part"):
        load_image_set(tmp_path / "vgg")


def test_align_vggface2_uses_given_landmarks_and_mtcnn_only_where_missing(embedded_data: Path, tmp_path: Path
                                                                          ) -> None:
    from fvtool.align.options import AlignOptions
    from fvtool.align.stage import align_folder

    part = _vggface2(embedded_data, tmp_path / "vgg", identities=2, per=2)
    summary = align_folder(part, tmp_path / "al", AlignOptions(size=48, min_face_size=20, show_progress=False))
    rows = {r.src: r for r in read_manifest(tmp_path / "al" / "manifest.csv")}
    assert summary.counts["ok"] == 4
    assert rows["n000001/0001_01.jpg"].prob is not None  # detected by MTCNN
    given = [r for k, r in rows.items() if k != "n000001/0001_01.jpg"]
    assert all(r.prob is None and np.allclose(r.landmarks, LANDMARKS_125.reshape(-1)) for r in given)
    # the given landmarks go through the same similarity warp as MTCNN's
    src = Image.open(part / "n000002/0001_01.jpg").convert("RGB")
    expected = np.asarray(warp_similarity(src, LANDMARKS_125, 48), dtype=np.int16)
    got = np.asarray(Image.open(tmp_path / "al" / "n000002/0001_01.jpg"), dtype=np.int16)
    assert np.abs(got - expected).mean() < 3.0  # JPEG re-encoding only
    config = json.loads((tmp_path / "al" / "align.json").read_text())
    assert config["layout"] == "vggface2" and len(config["source_problems"]) == 2


# ---- CASIA-WebFace -----------------------------------------------------------------------------

def test_casia_cleaned_list(embedded_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "CASIA-WebFace"
    lines = []
    for k, (_, files) in enumerate(_lfw(embedded_data, 3, 3)):
        ident = f"{45 + k:07d}"
        (root / ident).mkdir(parents=True)
        for j, f in enumerate(files):
            shutil.copy(f, root / ident / f"{j + 1:03d}.jpg")
            if (k, j) not in ((1, 2), (2, 2)):
                lines.append(f"{ident}\\{j + 1:03d}.jpg {k}")  # Windows separators, as circulated
    lines.append(f"{45:07d}\\009.jpg 0")  # listed, missing
    lines.append(f"{47:07d}\\003.jpg 0")  # contradicts: folder 0000047 has label 2, label 0 is 0000045
    lines.append("garbage")
    (root / "cleaned_list.txt").write_text("\n".join(lines) + "\n")
    images = load_image_set(root)
    assert images.source == "casia-webface" and len(images) == 7
    assert images.identities[0] == "0000045" and images.keys[0] == "0000045/001.jpg"
    reasons = " | ".join(p.reason for p in images.problems)
    assert len(images.problems) == 4
    for text in ("missing", "contradicts", "expected `path label`", "not in cleaned_list.txt"):
        assert text in reasons
    # without the list: a plain identity folder with all 9 images
    (root / "cleaned_list.txt").unlink()
    assert len(load_image_set(root)) == 9


# ---- MEDS-II -----------------------------------------------------------------------------------

def test_meds_subjects_from_names_and_profile_views(embedded_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "meds" / "data"
    root.mkdir(parents=True)
    for k, (_, files) in enumerate(_lfw(embedded_data, 3, 2)):
        for j, f in enumerate(files):
            name = f"S{k + 1:03d}-{j + 1:02d}-t10_01"
            shutil.copy(f, root / f"{name}.jpg")
            (root / f"{name}.txt").write_text(f"IDC=1\nPOS={'R' if (k, j) == (2, 1) else 'F'}\n")
    (root / "S099-01-t10_01.txt").write_text("POS=F\n")  # metadata without its image
    shutil.copy(files[0], root / "portrait.jpg")  # no subject id in the name
    images = load_image_set(tmp_path / "meds")
    assert images.source == "meds" and len(images) == 5
    assert images.identities == ["S001", "S001", "S002", "S002", "S003"]
    assert images.not_written["profile view"] == 1
    assert sorted(p.reason.split(" (")[0] for p in images.problems) == [
        "file name carries no MEDS subject id", "metadata for a missing image"]


# ---- the course layout (seed 002) ---------------------------------------------------------------

def test_course_layout_and_pair_lists(embedded_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    cls = tmp_path / "cls_data"
    for part in ("train", "dev", "test"):
        for ident, files in _lfw(embedded_data, 2, 2):
            (cls / part / ident).mkdir(parents=True)
            shutil.copy(files[0], cls / part / ident / "a.jpg")
    with pytest.raises(InputError, match="point fvtool at one"):
        load_image_set(cls)
    assert load_image_set(cls / "train").source == "folder"
    ver = tmp_path / "ver_data"
    ver.mkdir()
    for i, (_, files) in enumerate(_lfw(embedded_data, 2, 2)):
        for j, f in enumerate(files):
            shutil.copy(f, ver / f"{2 * i + j:05d}.jpg")
    flat = load_image_set(ver)
    assert flat.keys == ["00000.jpg", "00001.jpg", "00002.jpg", "00003.jpg"]
    # a labelled list -> protocol: identities are the groups of same pairs
    (tmp_path / "val.txt").write_text("ver_data/00000.jpg ver_data/00001.jpg 1\n"
                                      "ver_data/00000.jpg ver_data/00002.jpg 0\n"
                                      "ver_data/00002.jpg ver_data/00003.jpg 1\n")
    proto = read_any_protocol(tmp_path / "val.txt")
    assert proto.kind == "pairs" and proto.same.tolist() == [True, False, True]
    assert proto.identities[0] == proto.identities[1] != proto.identities[2] == proto.identities[3]
    (tmp_path / "bad.txt").write_text("a.jpg b.jpg 1\nb.jpg c.jpg 1\na.jpg c.jpg 0\n")
    with pytest.raises(InputError, match="labelled different"):
        pair_list_protocol(read_pair_list(tmp_path / "bad.txt"))
    # the unlabelled test list -> submission CSV with the cosine scores
    (tmp_path / "test_pair.csv").write_text("image_a,image_b\n00000.jpg,00001.jpg\n00003.jpg,00000.jpg\n")
    emb = np.array([[1, 0], [0.6, 0.8], [0, 1], [-1, 0]], dtype=np.float32)
    write_embeddings(tmp_path / "emb.h5", EmbeddingSet(emb, flat.keys, flat.identities, flat.status, {}))
    assert _cli("interop", "pair-scores", str(tmp_path / "test_pair.csv"), str(tmp_path / "emb.h5"),
                "-o", str(tmp_path / "submission.csv")) == 0
    assert (tmp_path / "submission.csv").read_text() == "ID,Label\n0,0.600000\n1,-1.000000\n"


# ---- end to end: align / pairs / train / embed on a .rec and on a VGGFace2 folder ----------------

def _cli(*args: str) -> int:
    """Run `fvtool ARGS` in-process; its exit code."""
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code or 0)


def _flow(data: Path, tmp: Path, n_ids: int) -> None:
    """The CLI path a user takes, on `data` as shipped (exit code 0 or 4 = finished with reported problems)."""
    def run(*args: str, ok: tuple[int, ...] = (0,)) -> None:
        assert _cli(*args) in ok, args

    run("align", str(data), "-o", str(tmp / "aligned"), "--size", "32", "--min-face-size", "20", "--quiet", ok=(0, 4))
    aligned = load_image_set(tmp / "aligned")
    assert len(aligned) >= 8
    run("pairs", "split", str(data), "--counts", f"{n_ids - 2},0,2", "--seed", "1", "-o", str(tmp / "split.json"))
    run("train", "--data", str(data), "--split", str(tmp / "split.json"), "--loss", "softmax", "--input-size", "16",
        "--embedding-size", "8", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--val-protocol", "none",
        "--out", str(tmp / "run"), "--quiet")
    run("embed", str(tmp / "run"), "--data", str(data), "-o", str(tmp / "emb.h5"))
    run("pairs", "allpairs", str(data), "--split", str(tmp / "split.json"), "-o", str(tmp / "ap.json"))
    es = read_embeddings(tmp / "emb.h5")
    assert es.keys == load_image_set(data).keys and np.isfinite(es.embeddings).all()


def test_end_to_end_on_a_rec(embedded_data: Path, tmp_path: Path) -> None:
    from fvtool.data.insightface_rec import write_rec_set

    src = load_image_set(embedded_data)
    src = src.take([i for i, ident in enumerate(src.identities) if ident in set(sorted(set(src.identities))[:5])])
    write_rec_set(src.take(range(0, len(src), 2)), tmp_path / "faces_small", size=32)
    _flow(tmp_path / "faces_small" / "train.rec", tmp_path, n_ids=5)


def test_end_to_end_on_a_vggface2_folder(embedded_data: Path, tmp_path: Path) -> None:
    part = _vggface2(embedded_data, tmp_path / "vgg", identities=5, per=3)
    _flow(part, tmp_path, n_ids=5)
