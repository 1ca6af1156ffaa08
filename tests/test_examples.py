"""The example studies (examples/study*.sh) run end to end, as shell scripts, on a tiny real dataset.

Each script runs under bash with QUICK=1 and its documented knobs turned down (examples/README.md):
20 LFW identities x 4 images of the embedded subset, aligned once by `fvtool align` at 32 px
(similarity, and crop for study 1), one epoch, batches of 32, a 2-fold x 10-pair test protocol, no
bootstrap. So every stage each script chains (align resume, identity split, protocols, train for
every loss with the script's options, embed, verify on pairs and all pairs, study 4's closed-set
identification, report) runs for real;
a wrong option name, a renamed loss or backbone, a missing output fails the test.

The scripts call fvtool ~160 times in all. A fresh `fvtool train`/`embed` process spends 3-5 s of
this 2-core machine importing torch and torchvision before 0.2 s of work, so the scripts' FVTOOL
points at tests/fvtool_forkserver.py: one server imports fvtool once and forks a process per
command with the command's own argv, environment, cwd, stdio and exit code. FVTOOL_EXAMPLES_REAL=1
runs the scripts with the installed `fvtool` instead (same checks, several times slower).
Every fvtool command runs on one thread (THREADS=1), so the scripts run two at a time
(FVTOOL_EXAMPLES_JOBS, default 2): the first test waits while its script shares the cores.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from fvtool.protocols.model import read_protocol
from fvtool.protocols.splits import read_split

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FORKSERVER = Path(__file__).with_name("fvtool_forkserver.py")

IDS, PER_ID, SIZE = 20, 4, 32
FOLDS, NPAIRS = 2, 10  # the test part holds 4 identities x 4 images: 2 folds of 2 x C(4,2) = 12 pairs
KNOBS = {"QUICK": "1", "SIZE": str(SIZE), "IN": str(SIZE), "EPOCHS": "1", "BOOTSTRAP": "0", "THREADS": "1",
         "BATCH": "32", "FOLDS": str(FOLDS), "NPAIRS": str(NPAIRS), "RANDOM_PAIRS": "60"}
# no SVG copies, no example-pair grids (study 1 draws two per run): report is the slowest stage here
REPORT_ARGS = {"study1_siamese": "--formats none --examples 2"}
LEAN_REPORT = "--formats none --examples 0"

# additive-margin losses run at s = 16 with a one-epoch warm-up (s = 64 did not converge on LFW)
MARGIN = {"scale": 16, "warmup_epochs": 1}
# run name -> the training options the script promises (checked against the run's config.json);
# "recipe": BASE means the run trains with recipe BASE-faithful (RECIPE's default), checked by _assert_recipe
STUDIES: dict[str, tuple[str, dict[str, dict]]] = {
    "study1_siamese": ("crop", {  # bce, contrastive, triplet: on the random pair split (PAIR_FILE_RUNS)
        "bce": {"recipe": "study1-bce", "loss": "siamese-bce", "backbone": "siamese_cnn"},
        "contrastive": {"recipe": "study1-contrastive", "method": "siamese", "backbone": "siamese_cnn"},
        "triplet": {"recipe": "study1-triplet", "method": "siamese", "backbone": "siamese_cnn"},
        "vae-bce": {"recipe": "study1-vae-bce", "backbone": "conv-encoder"},  # the VAE's own encoder
        "vae-mse": {"recipe": "study1-vae-mse", "backbone": "conv-encoder"},
    }),
    "study2_resnet18_ce_arcface_vae": ("similarity", {
        "resnet18-ce": {"recipe": "study2-ce"},
        "resnet18-arcface": {"recipe": "study2-arcface"},
        "vae-mu": {"recipe": "study2-vae", "backbone": "conv-encoder",  # 4x4 map at IN = 32: depth 3
                   "backbone_options": {"depth": 3, "width": 512}},
    }),
    "study3_losses": ("similarity", {
        "softmax": {"loss": "softmax", "backbone": "resnet_small"},
        "arcface": {"loss": "arcface", "backbone": "resnet_small", **MARGIN},
        "cosface": {"loss": "cosface", "backbone": "resnet_small", **MARGIN},
        "sphereface": {"loss": "sphereface", "backbone": "resnet_small"},
        "combined": {"recipe": "study3-combined"},
        "triplet": {"loss": "triplet", "mining": "semihard", "lr": 0.05},
        "npair": {"loss": "npair", "lr": 0.05},
        "circle": {"recipe": "study3-circle", "pk": [8, 4]},
        "supcon": {"loss": "supcon", "lr": 0.05},
    }),
    "study4_resnet18fc2_96": ("similarity", {
        "center": {"recipe": "study4-center"},
        "softmax": {"recipe": "study4-softmax"},
        "triplet-random": {"recipe": "study4-triplet"},
        "margin-dw": {"recipe": "study4-margin", "pk": [8, 4]},  # the faithful 1600 x 4, narrowed
        "hard-margin-dw": {"recipe": "study4-hard-margin", "pk": [8, 4]},
    }),
    "study5_resnet21": ("similarity", {
        f"{net}-{name}": {"backbone": net, **opts}
        for net in ("resnet21", "resnet13")
        for name, opts in {
            "ce": {"recipe": "study5-ce"},
            "triplet": {"recipe": "study5-triplet", "pk": [8, 4]},
            "arcface": {"recipe": "study5-arcface"},
            "ce-ft-triplet": {"recipe": "study5-ft-triplet", "pk": [8, 4], "init_from": f"runs/{net}-ce"},
            "arcface-ft-triplet": {"recipe": "study5-ft-triplet", "pk": [8, 4], "init_from": f"runs/{net}-arcface"},
        }.items()
    }),
}
# runs trained on a pairs file (`train --train-pairs`) and verified on its test part only (study 1)
PAIR_FILE_RUNS = {"study1_siamese": ("bce", "contrastive", "triplet")}
EUCLIDEAN = {"study2_resnet18_ce_arcface_vae": ["resnet18-ce", "resnet18-arcface", "vae-mu"]}
# closed-set identification (`fvtool identify`) of every run's embeddings on the split's test identities
IDENTIFY = {"study4_resnet18fc2_96": ("logreg", "ncm", "1nn")}
# recognition of the training identities on their held-out images (`pairs split --heldout-images 1`,
# `embed --part train,heldout`, `identify --heldout`)
HELDOUT = {"study4_resnet18fc2_96": 1}


@pytest.fixture(scope="module")
def fvtool_cmd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The command the scripts run as FVTOOL: a fork-server client, or the real `fvtool`."""
    if os.environ.get("FVTOOL_EXAMPLES_REAL") == "1":
        yield str(Path(sys.executable).parent / "fvtool")
        return
    sockdir = Path(tempfile.mkdtemp(prefix="fvfs-", dir="/tmp" if Path("/tmp").is_dir() else None))
    sock = sockdir / "s"  # short: AF_UNIX paths are limited to ~100 bytes
    log = tmp_path_factory.mktemp("forkserver") / "server.log"
    with open(log, "w") as err:  # per-command exit code and CPU seconds, for a test that got slow
        server = subprocess.Popen([sys.executable, str(FORKSERVER), "serve", str(sock)],
                                  stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.strip() == "ready", f"fork server did not start: {log.read_text()[-2000:]}"
        client = sockdir / "fvtool"
        client.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{FORKSERVER}" client "{sock}" "$@"\n')
        client.chmod(0o755)
        yield str(client)
    finally:  # the server's own process group: the server, its handlers and any command in flight
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(sockdir, ignore_errors=True)


def _run_fvtool(cmd: str, *args: str, cwd: Path) -> None:
    env = {**os.environ, "FVTOOL_WORKSPACE": str(cwd / "fvwork")}
    r = subprocess.run([cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, f"fvtool {' '.join(args)} -> {r.returncode}\n{r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, fvtool_cmd: str, embedded_data: Path) -> dict[str, Path]:
    """IDS x PER_ID real LFW images as an identity folder, aligned once per mode at SIZE px."""
    base = tmp_path_factory.mktemp("tiny")
    src = base / "lfw-tiny"
    for ident in sorted(p.name for p in embedded_data.iterdir() if p.is_dir())[:IDS]:
        files = sorted((embedded_data / ident).glob("*.jpg"))[:PER_ID]
        assert len(files) == PER_ID, ident
        (src / ident).mkdir(parents=True)
        for f in files:
            shutil.copy2(f, src / ident / f.name)
    sim, crop = base / "similarity", base / "crop"
    _run_fvtool(fvtool_cmd, "align", str(src), "-o", str(sim), "--mode", "similarity", "--size", str(SIZE),
                "--threads", "1", "-q", cwd=base)
    _run_fvtool(fvtool_cmd, "align", str(src), "-o", str(crop), "--mode", "crop", "--size", str(SIZE),
                "--threads", "1", "-q", "--reuse-detections", str(sim), cwd=base)
    return {"src": src, "similarity": sim, "crop": crop}


LONGEST_FIRST = ["study5_resnet21", "study3_losses", "study1_siamese", "study4_resnet18fc2_96",
                 "study2_resnet18_ce_arcface_vae"]


def _run_script(study: str, tiny: dict[str, Path], fvtool_cmd: str,
                base: Path) -> tuple[Path, Path, subprocess.CompletedProcess]:
    mode = STUDIES[study][0]
    aligned = base / f"aligned-{mode}"
    shutil.copytree(tiny[mode], aligned)  # the script's align resumes into it; the fixture's copy stays clean
    ws = base / "ws"
    env = {**os.environ, **KNOBS, "FVTOOL": fvtool_cmd, "SRC": str(tiny["src"]), "ALIGNED": str(aligned),
           "WS": str(ws), "REPORT_ARGS": REPORT_ARGS.get(study, LEAN_REPORT)}
    r = subprocess.run(["bash", str(EXAMPLES / f"{study}.sh")], cwd=base, env=env, capture_output=True,
                       text=True, timeout=3600)  # pytest's per-test timeout is the real limit
    return aligned, ws, r


@pytest.fixture(scope="module")
def script_runs(request: pytest.FixtureRequest, tiny: dict[str, Path], fvtool_cmd: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    """Start every selected study's script (longest first, FVTOOL_EXAMPLES_JOBS at a time)."""
    selected = {item.callspec.params["study"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    if any(item.module is request.module and item.name == "test_rerun_resumes_with_prealigned_data"
           for item in request.session.items):
        selected.add(RERUN_STUDY)
    jobs = int(os.environ.get("FVTOOL_EXAMPLES_JOBS", min(2, os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        yield {s: pool.submit(_run_script, s, tiny, fvtool_cmd, tmp_path_factory.mktemp(s))
               for s in LONGEST_FIRST if s in selected}


def _assert_recipe(cfg: dict, recipe_name: str, run: str) -> None:
    """The run used the recipe, and every recipe field the script did not override has the recipe's value."""
    from fvtool.recipes import load_recipe

    recipe = load_recipe(recipe_name)
    assert cfg["recipe"]["name"] == recipe_name and cfg["recipe"]["sha256"] == recipe.sha256, run
    overridden = set(cfg["recipe"]["overrides"])
    assert {"input_size", "epochs"} <= overridden, run  # the script's scale options
    for key, want in recipe.config.items():
        if key in overridden:
            continue
        got = cfg[key]
        if isinstance(want, dict):  # a table: the recipe's entries (augment is saved with every field)
            got = {k: got.get(k) for k in want}
        assert got == want, f"{run}: {key} = {got!r}, recipe {recipe_name} says {want!r}"


def _metrics(path: Path) -> dict:
    f = path / "metrics.json"
    assert f.is_file(), f"missing {f}"
    return json.loads(f.read_text())


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the first test also waits for the alignment fixture and queued scripts
@pytest.mark.parametrize("study", sorted(STUDIES))
def test_example_script_runs_end_to_end(study: str, script_runs: dict[str, Future]) -> None:
    runs = STUDIES[study][1]
    aligned, ws, r = script_runs[study].result()
    assert r.returncode == 0, f"{study}.sh exited {r.returncode}\n{r.stderr[-5000:]}"
    assert f"report: {ws}/report/report.html" in r.stderr

    # the protocols come from the split's test identities only
    split = read_split(ws / "splits" / "quick.json")
    test_ids = split.part("test")
    assert len(test_ids) == 4 and not set(test_ids) & set(split.part("train"))
    n_test = len(test_ids) * PER_ID
    genuine_all = len(test_ids) * PER_ID * (PER_ID - 1) // 2

    verify_dirs = []
    for name, expect in runs.items():
        run = ws / "runs" / name
        cfg = json.loads((run / "config.json").read_text())["config"]
        on_pairs = name in PAIR_FILE_RUNS.get(study, ())
        if on_pairs:
            assert cfg["split"] is None and Path(cfg["train_pairs"]) == ws / "splits" / "random-pair-split.json"
        else:
            assert Path(cfg["split"]) == ws / "splits" / "quick.json", name
        assert Path(cfg["data"]) == aligned, name
        assert cfg["input_size"] == SIZE and cfg["epochs"] == 1 and cfg["batch_size"] == 32, name
        for key, want in expect.items():
            if key == "recipe":
                _assert_recipe(cfg, f"{want}-faithful", name)
                continue
            got = cfg[key]
            if key == "init_from":
                got, want = Path(got), ws / want
            assert got == want, f"{study} {name}: {key} = {got!r}, the script asks for {want!r}"
        assert (run / "checkpoints" / "last.pt").is_file(), name
        epochs = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
        assert [h["epoch"] for h in epochs if h["kind"] == "epoch"] == [1], name
        assert (ws / "embeddings" / f"{name}.h5").is_file(), name

        pairs = _metrics(ws / "verify" / f"{name}-pairs")
        if on_pairs:  # every image embedded; scored on the pair split's test part (2 folds)
            test_part = read_protocol(ws / "protocols" / "random-pair-split-test.json")
            assert pairs["embeddings"]["n"] == IDS * PER_ID and pairs["kfold"]["folds"] == 2, name
            assert pairs["counts"]["genuine"] == int(test_part.same.sum()) > 0, name
            assert pairs["counts"]["impostor"] == int((~test_part.same).sum()) > 0, name
            # the faithful heads and losses act on raw Euclidean distances: the test part is scored with them
            assert pairs["scoring"]["metric"] == "euclidean" and pairs["scoring"]["normalised"] is False, name
            verify_dirs.append(f"{name}-pairs")
            continue
        assert pairs["embeddings"]["n"] == n_test, name  # embed --split --part test: the test images only
        assert pairs["counts"]["genuine"] == pairs["counts"]["impostor"] == FOLDS * NPAIRS, name
        assert pairs["kfold"]["folds"] == FOLDS and pairs["scoring"]["metric"] == "cosine"
        assert 0.0 <= pairs["eer"]["value"] <= 1.0 and 0.0 <= pairs["auc"]["value"] <= 1.0
        allp = _metrics(ws / "verify" / f"{name}-allpairs")
        assert allp["counts"]["genuine"] == genuine_all, name
        assert allp["counts"]["impostor"] == n_test * (n_test - 1) // 2 - genuine_all, name
        assert {op["far_target"] for op in allp["operating_points"]} >= {1e-3, 1e-4, 1e-5}
        verify_dirs += [f"{name}-pairs", f"{name}-allpairs"]
    for name in EUCLIDEAN.get(study, []):
        m = _metrics(ws / "verify" / f"{name}-euclid-pairs")
        assert m["scoring"]["metric"] == "euclidean" and m["intersection"] is not None, name
        assert m["scoring"]["normalised"] is False, f"{name}: the faithful recipes score raw distances"
        verify_dirs.append(f"{name}-euclid-pairs")
    assert sorted(p.name for p in (ws / "runs").iterdir()) == sorted(runs), "runs the test does not know about"
    identified = []
    for name in runs if study in IDENTIFY else []:  # each test identity: 2 images train, 2 test
        sha = _metrics(ws / "verify" / f"{name}-pairs")["embeddings"]["sha256"]
        for clf in IDENTIFY[study]:
            f = ws / "identify" / f"{name}-quick-test-{clf}.json"
            assert f.is_file(), f"missing {f}"
            m = json.loads(f.read_text())
            assert m["format"] == "fvtool-identify" and m["embeddings"]["sha256"] == sha, f
            assert m["subset"]["part"] == "test" and m["subset"]["images"] == n_test, f
            assert m["protocol"]["classifier"] == clf and m["protocol"]["train_fraction"] == 0.5, f
            assert m["counts"]["classes"] == len(test_ids) and m["counts"]["dropped_identities"] == 0, f
            assert m["counts"]["train_images"] == m["counts"]["test_images"] == n_test // 2, f
            a = m["accuracy"]
            assert 0.0 <= a["top1"] <= 1.0 and a["top5"] is None, f  # <= 5 classes: no top-5
            assert a["correct_top1"] == round(a["top1"] * (n_test // 2)), f
            assert m["chance"]["uniform_top1"] == 1 / len(test_ids), f
            identified.append(name)

    per = HELDOUT.get(study)
    if per:  # every training identity (4 images each) holds `per` images out of training
        train_ids = split.part("train")
        assert split.part("heldout") == train_ids
        for name in runs:
            m = json.loads((ws / "identify" / f"{name}-trainids-quick-heldout-logreg.json").read_text())
            c = m["counts"]
            assert m["subset"]["part"] == "heldout" and m["protocol"]["train_fraction"] is None, name
            assert c["classes"] == len(train_ids) and c["test_images"] == per * len(train_ids), name
            assert c["train_images"] == (PER_ID - per) * len(train_ids), name
            cfg = json.loads((ws / "runs" / name / "config.json").read_text())
            assert cfg["resolved"]["data"]["n_train_images"] == c["train_images"], name  # training never saw them
            assert 0.0 <= m["accuracy"]["top1"] <= 1.0, name

    # one report over every verify output of the script
    html = ws / "report" / "report.html"
    assert html.is_file() and html.stat().st_size > 10_000
    with open(ws / "report" / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(row["verify_dir"]).name for row in rows) == sorted(verify_dirs)
    for row in rows:  # the report shows the closed-set accuracy of the row's embeddings
        name = Path(row["verify_dir"]).name.rsplit("-", 1)[0]
        for clf in IDENTIFY.get(study, ()):
            assert (row[f"identify_top1_{clf}"] != "") == (name in identified), (row["verify_dir"], clf)
    figures = sorted(p.name for p in (ws / "report" / "figures").iterdir())
    assert "det.png" in figures and "roc.png" in figures and all(f.endswith(".png") for f in figures)
    grids = [f for f in figures if f.startswith("pairs_")]
    assert len(grids) == (0 if "--examples 0" in REPORT_ARGS.get(study, LEAN_REPORT) else len(verify_dirs)), grids

    if study == "study1_siamese":  # the original random 72/18/10 pair split, reproduced with its warning
        said = " ".join(r.stderr.split())  # rich wraps lines at the console width
        assert "WARNING: identity leakage" in said
        assert re.search(r"leakage: \d+ of \d+ test identities and \d+ of \d+ test images also occur in train pairs",
                         said), said[-3000:]
        assert (ws / "splits" / "random-pair-split.json").is_file()


RERUN_STUDY = "study2_resnet18_ce_arcface_vae"  # the shortest script


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_rerun_resumes_with_prealigned_data(script_runs: dict[str, Future], fvtool_cmd: str) -> None:
    """A second run of a finished script in its workspace resumes: every `train` continues its run with
    `--resume` and the run's own config (nothing retrains), and PREALIGNED / DEVICE are honoured:
    no `fvtool align`, the given folder as the data, `--device` on train and embed."""
    aligned, ws, first = script_runs[RERUN_STUDY].result()
    assert first.returncode == 0, first.stderr[-3000:]
    runs = STUDIES[RERUN_STUDY][1]
    histories = {name: (ws / "runs" / name / "history.jsonl").read_text() for name in runs}
    env = {**os.environ, **KNOBS, "FVTOOL": fvtool_cmd, "PREALIGNED": str(aligned), "DEVICE": "cpu",
           "WS": str(ws), "REPORT_ARGS": LEAN_REPORT}
    env.pop("ALIGNED", None)
    env.pop("SRC", None)
    r = subprocess.run(["bash", str(EXAMPLES / f"{RERUN_STUDY}.sh")], cwd=ws.parent, env=env,
                       capture_output=True, text=True, timeout=3000)  # below the test's own limit
    assert r.returncode == 0, f"rerun exited {r.returncode}\n{r.stderr[-5000:]}"
    said = r.stderr
    assert "+ fvtool align" not in said and f"using the aligned folder {aligned} as is" in said
    for name in runs:
        assert f"+ fvtool train -o {ws}/runs/{name} --resume --threads 1 --device cpu\n" in said, name
        assert re.search(rf"\+ fvtool embed {re.escape(str(ws))}/runs/{name} --data {re.escape(str(aligned))} "
                         rf".*--device cpu", said), name
        assert (ws / "runs" / name / "history.jsonl").read_text() == histories[name], f"{name} trained again"
    assert f"report: {ws}/report/report.html" in said


def _report_args(tmp_path: Path, made: list[str], only: str = "") -> tuple[int, str, str]:
    """Source examples/_common.sh with a stub FVTOOL, make WS/verify/<made>, call `report`; (rc, argv, stderr)."""
    ws = tmp_path / "ws"
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name in made:
        (ws / "verify" / name).mkdir(parents=True)
    stub = tmp_path / "fvtool"
    stub.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/argv"\n')
    stub.chmod(0o755)
    script = f'source "{EXAMPLES}/_common.sh"\nreport\n'
    env = {**os.environ, "FVTOOL": str(stub), "WS": str(ws), "ONLY": only, "BOOTSTRAP": "0"}
    r = subprocess.run(["bash", "-c", script, "study"], env=env, capture_output=True, text=True, timeout=60)
    argv = tmp_path / "argv"
    return r.returncode, argv.read_text() if argv.exists() else "", r.stderr


def test_report_takes_the_verify_outputs_present(tmp_path: Path) -> None:
    """ONLY= may skip every run scored on all pairs (study 1's verifiers): `report` then reports the pairs
    outputs instead of failing on an unmatched `*-allpairs` glob; with no verify output it says so."""
    rc, argv, err = _report_args(tmp_path / "a", ["bce-pairs", "triplet-pairs"])
    assert rc == 0, err
    words = argv.split()
    assert words[0] == "report" and [Path(w).name for w in words[1:3]] == ["bce-pairs", "triplet-pairs"]
    assert words[3] == "-o" and "allpairs" not in argv
    rc, argv, err = _report_args(tmp_path / "b", ["a-allpairs", "a-pairs"])
    assert rc == 0 and [Path(w).name for w in argv.split()[1:3]] == ["a-pairs", "a-allpairs"], err
    rc, argv, err = _report_args(tmp_path / "c", [])
    assert rc == 0 and argv == "" and "no verify outputs" in err


# DATA=: the study trains on its own dataset as shipped (examples/_common.sh), verified on LFW as before.
# Miniatures in the published formats, from embedded LFW identities that the LFW part above does not use.
DATA_IDS, DATA_PER = 8, 4


def _data_sets(embedded: Path, base: Path) -> dict[str, Path]:
    """An insightface .rec (pre-aligned, SIZE px) and a CASIA-WebFace folder (numeric identity folders of
    001.jpg ... with its cleaned_list.txt; raw images, so the script aligns it)."""
    from fvtool.data.dataset import load_image_set
    from fvtool.data.insightface_rec import write_rec_set

    names = sorted(p.name for p in embedded.iterdir() if p.is_dir())[IDS:IDS + 2 * DATA_IDS]
    plain, casia, lines = base / "rec-src", base / "CASIA-WebFace", []
    for k, name in enumerate(names):
        files = sorted((embedded / name).glob("*.jpg"))[:DATA_PER]
        if k < DATA_IDS:
            (plain / name).mkdir(parents=True)
            for f in files:
                shutil.copy2(f, plain / name / f.name)
        else:
            ident = f"{45 + k:07d}"
            (casia / ident).mkdir(parents=True)
            for j, f in enumerate(files):
                shutil.copy2(f, casia / ident / f"{j + 1:03d}.jpg")
                lines.append(f"{ident}\\{j + 1:03d}.jpg {k - DATA_IDS}")
    (casia / "cleaned_list.txt").write_text("\n".join(lines) + "\n")
    n, problems = write_rec_set(load_image_set(plain), base / "ms1m", size=SIZE)
    assert n == DATA_IDS * DATA_PER and not problems
    return {"rec": base / "ms1m", "rec_ids": sorted(names[:DATA_IDS]),
            "casia": casia, "casia_ids": [f"{45 + k:07d}" for k in range(DATA_IDS, 2 * DATA_IDS)]}


def _run_with(study: str, tiny: dict[str, Path], fvtool_cmd: str, base: Path, **extra: str
              ) -> tuple[Path, subprocess.CompletedProcess]:
    aligned = base / "aligned-lfw"
    if not aligned.exists():
        shutil.copytree(tiny[STUDIES[study][0]], aligned)
    ws = base / "ws"
    env = {**os.environ, **KNOBS, "FVTOOL": fvtool_cmd, "SRC": str(tiny["src"]), "ALIGNED": str(aligned),
           "WS": str(ws), "REPORT_ARGS": LEAN_REPORT, "BATCH": "16", **extra}  # DATA's 8 x 4 images, some held out
    r = subprocess.run(["bash", str(EXAMPLES / f"{study}.sh")], cwd=base, env=env, capture_output=True,
                       text=True, timeout=1500)
    return ws, r


def _check_data_run(ws: Path, run: str, data: Path, ids: list[str]) -> None:
    """The run trained on every identity of DATA and was verified on the LFW subset's test part."""
    cfg = json.loads((ws / "runs" / run / "config.json").read_text())
    assert Path(cfg["config"]["data"]) == data, run
    assert Path(cfg["config"]["split"]) == ws / "splits" / "data-all.json", run
    split = read_split(ws / "splits" / "data-all.json")
    assert sorted(split.part("train")) == ids and not split.part("val") and not split.part("test")
    assert cfg["resolved"]["data"]["num_classes"] == len(ids) and Path(cfg["resolved"]["data"]["data_root"]) == data
    lfw = read_split(ws / "splits" / "quick.json")  # the LFW stand-in's split: its test part is verified
    n_test = len(lfw.part("test")) * PER_ID
    assert not set(lfw.part("test")) & set(ids)
    pairs = _metrics(ws / "verify" / f"{run}-pairs")
    assert pairs["embeddings"]["n"] == n_test and pairs["counts"]["genuine"] == FOLDS * NPAIRS, run
    allp = _metrics(ws / "verify" / f"{run}-allpairs")
    assert allp["counts"]["genuine"] == len(lfw.part("test")) * PER_ID * (PER_ID - 1) // 2, run


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_data_trains_on_the_shipped_set(tiny: dict[str, Path], fvtool_cmd: str, embedded_data: Path,
                                        tmp_path: Path) -> None:
    """DATA= a .rec (used as is: no align) for study 2, and a CASIA-WebFace folder (aligned by the script at
    the study's mode and size; SPLIT_OPTS held-out images drawn from DATA's identities) for study 4."""
    sets = _data_sets(embedded_data, tmp_path / "sets")
    ws, r = _run_with("study2_resnet18_ce_arcface_vae", tiny, fvtool_cmd, tmp_path / "s2",
                      DATA=str(sets["rec"]), ONLY="resnet18-ce")
    assert r.returncode == 0, r.stderr[-5000:]
    assert f"training on DATA={sets['rec']} as is" in r.stderr and f"+ fvtool align {sets['rec']}" not in r.stderr
    _check_data_run(ws, "resnet18-ce", sets["rec"], sets["rec_ids"])
    assert (ws / "verify" / "resnet18-ce-euclid-pairs" / "metrics.json").is_file()

    ws, r = _run_with("study4_resnet18fc2_96", tiny, fvtool_cmd, tmp_path / "s4",
                      DATA=str(sets["casia"]), ONLY="softmax")
    assert r.returncode == 0, r.stderr[-5000:]
    aligned = ws / "aligned" / f"data-CASIA-WebFace-similarity{SIZE}"
    assert f"+ fvtool align {sets['casia']} -o {aligned} --mode similarity --size {SIZE}" in r.stderr
    assert (aligned / "manifest.csv").is_file()
    _check_data_run(ws, "softmax", aligned, sets["casia_ids"])
    split = read_split(ws / "splits" / "data-all.json")
    assert split.part("heldout") == split.part("train")  # QUICK=1: 1 of each DATA identity's images
    m = json.loads((ws / "identify" / "softmax-trainids-data-all-heldout-logreg.json").read_text())
    assert m["counts"]["classes"] == DATA_IDS and m["counts"]["test_images"] == DATA_IDS, m["counts"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bad_data_stops_with_a_message(tiny: dict[str, Path], fvtool_cmd: str, tmp_path: Path) -> None:
    study = "study3_losses"
    missing = tmp_path / "nowhere"
    _, r = _run_with(study, tiny, fvtool_cmd, tmp_path / "a", DATA=str(missing))
    assert r.returncode == 2 and f"DATA={missing}: no such file or folder" in r.stderr, r.stderr[-2000:]
    assert "+ fvtool" not in r.stderr  # checked before any stage runs
    text = tmp_path / "list.txt"
    text.write_text("not a dataset\n")
    _, r = _run_with(study, tiny, fvtool_cmd, tmp_path / "a", DATA=str(text))
    assert r.returncode == 2 and f"DATA={text}: not a dataset fvtool reads" in r.stderr, r.stderr[-2000:]
    junk = tmp_path / "junk"
    (junk / "notes").mkdir(parents=True)
    (junk / "notes" / "readme.txt").write_text("no images here\n")
    _, r = _run_with(study, tiny, fvtool_cmd, tmp_path / "a", DATA=str(junk))
    # align lists the text file as unreadable (exit 4, tolerated: a shipped set may hold a few bad files); the
    # split then finds no image
    assert r.returncode == 3 and f"DATA={junk}: fvtool pairs split failed (exit 3)" in r.stderr, r.stderr[-2000:]
    assert "+ fvtool train" not in r.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_study5_meds_all_pairs(tiny: dict[str, Path], fvtool_cmd: str, embedded_data: Path, tmp_path: Path) -> None:
    """Study 5 with DATA= a .rec and MEDS= a miniature MEDS-II release (S<subject>-<encounter>-... mugshots,
    aligned by the script): the run is also scored on all pairs of MEDS's images down to FAR 1e-5."""
    sets = _data_sets(embedded_data, tmp_path / "sets")
    meds = tmp_path / "MEDS-II" / "data"
    meds.mkdir(parents=True)
    names = sorted(p.name for p in embedded_data.iterdir() if p.is_dir())[IDS + 2 * DATA_IDS:IDS + 2 * DATA_IDS + 4]
    for k, name in enumerate(names):
        for j, f in enumerate(sorted((embedded_data / name).glob("*.jpg"))[:3]):
            shutil.copy2(f, meds / f"S{k + 1:03d}-{j + 1:02d}-t10_01.jpg")
    ws, r = _run_with("study5_resnet21", tiny, fvtool_cmd, tmp_path / "s5", DATA=str(sets["rec"]),
                      MEDS=str(meds.parent), ONLY="resnet13-ce")
    assert r.returncode == 0, r.stderr[-5000:]
    _check_data_run(ws, "resnet13-ce", sets["rec"], sets["rec_ids"])
    m = _metrics(ws / "verify" / "resnet13-ce-meds-allpairs")
    assert m["embeddings"]["n"] == 12 and m["counts"]["genuine"] == 4 * 3 and m["counts"]["impostor"] == 66 - 12, m
    assert {op["far_target"] for op in m["operating_points"]} >= {1e-3, 1e-4, 1e-5}
    with open(ws / "report" / "table.csv", newline="") as f:
        assert "resnet13-ce-meds-allpairs" in {Path(row["verify_dir"]).name for row in csv.DictReader(f)}
    _, r = _run_with("study5_resnet21", tiny, fvtool_cmd, tmp_path / "s5b", MEDS=str(tmp_path / "nowhere"))
    assert r.returncode == 2 and f"MEDS={tmp_path / 'nowhere'}: not a folder" in r.stderr, r.stderr[-2000:]
