"""`fvtool report` end to end on outputs of the real verify stage.

Inputs: the embedded LFW subset's keys, an identity-disjoint 10-fold pairs protocol from
`fvtool.protocols.generate`, three synthetic embedding files (one shared set of identity centres,
different noise = three "losses") scored by `fvtool.verification.stage.verify`, and training run
folders in the engine's format (config.json from the real TrainConfig, history.jsonl records as
the engine writes them; the engine itself is too slow for a unit test), one with AE/VAE images.
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report_parts import external_references

from fvtool.atomic import sha256_file
from fvtool.cli import main
from fvtool.data.dataset import load_image_set
from fvtool.data.embeddings import EmbeddingSet, write_embeddings
from fvtool.errors import InputError
from fvtool.protocols.generate import generate_kfold
from fvtool.protocols.model import write_protocol
from fvtool.reporting.stage import ReportOptions, make_report, select_examples
from fvtool.settings import EMBEDDED_DATA
from fvtool.training.config import TrainConfig
from fvtool.verification.stage import VerifyOptions, verify
from fvtool.workspace import Workspace

RUNS = {"softmax": 1.6, "arcface": 1.2, "cosface": 1.35}  # noise spread per "loss" (EER about 13%, 4%, 6%)
REPLICATES = 200


def _write_run(run_dir: Path, loss: str, epochs: int, n_images: int, n_ids: int, images: bool = False) -> None:
    cfg = TrainConfig(loss=loss, epochs=epochs, input_size=64, data=str(EMBEDDED_DATA), backbone="resnet_small")
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(f"weights of {loss}".encode())
    resolved = {"method": "embedding", "sampler": {"batches_per_epoch": 10},
                "data": {"n_train_images": n_images, "num_classes": n_ids}}
    (run_dir / "config.json").write_text(json.dumps({"format": "fvtool-run", "version": 1, "config": cfg.to_dict(),
                                                     "resolved": resolved}))
    rng = np.random.default_rng(len(loss))
    lines = []
    for e in range(1, epochs + 1):
        val = {"balanced_accuracy": 0.68 + 0.05 * e, "accuracy": 0.7 + 0.05 * e,
               "eer": 0.3 / e, "auc": 0.9, "frr@far=0.01": 0.5 / e, "frr@far=0.001": None,
               "n_genuine": 600, "n_impostor": 1500, "time_s": 2.0}
        lines.append({"kind": "epoch", "epoch": e, "step": 10 * e, "lr": 0.1 / e, "loss": 5.0 / e + rng.random(),
                      "components": {"ce": 4.0 / e}, "stats": {}, "train_accuracy": 0.2 * e, "images": n_images,
                      "time_s": 30.0, "img_per_s": n_images / 30.0, "val": val})
    (run_dir / "history.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    if images:
        (run_dir / "images").mkdir()
        for e in range(1, epochs + 1):
            for kind in ("recon", "samples"):
                arr = (np.random.default_rng(e).random((34, 130, 3)) * 255).astype(np.uint8)
                Image.fromarray(arr).save(run_dir / "images" / f"{kind}_epoch{e:03d}.png")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three verified runs (one verified with --compare against softmax), one training-only VAE run,
    and the report built from them."""
    root = tmp_path_factory.mktemp("study")
    ws = root / "fvwork"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FVTOOL_WORKSPACE", str(ws))
        images = load_image_set(EMBEDDED_DATA)
        proto, _ = generate_kfold(images.keys, images.identities, folds=10, n_same=60, n_diff=150, seed=0,
                                  name="subset10")
        proto_path = root / "subset10.json"
        write_protocol(proto_path, proto)
        ids = np.unique(images.identities, return_inverse=True)[1]
        centres = np.random.default_rng(0).normal(size=(ids.max() + 1, 64))
        emb_paths = {}
        for k, (loss, spread) in enumerate(RUNS.items()):
            run_dir = ws / "runs" / loss
            _write_run(run_dir, loss, 3, len(images.keys), int(ids.max() + 1))
            emb = centres[ids] + np.random.default_rng(10 + k).normal(scale=spread, size=(len(ids), 64))
            ckpt = run_dir / "checkpoints" / "last.pt"
            attrs = {"backbone": "resnet_small", "loss": loss, "input_size": 64, "data_root": str(EMBEDDED_DATA),
                     "run": str(run_dir), "checkpoint": str(ckpt), "checkpoint_sha256": sha256_file(ckpt),
                     "source": "embed"}
            emb_paths[loss] = ws / "embeddings" / f"{loss}.h5"
            write_embeddings(emb_paths[loss], EmbeddingSet(emb.astype(np.float32), list(images.keys),
                                                           list(images.identities), ["ok"] * len(ids), attrs))
        for loss in RUNS:
            opts = VerifyOptions(out=ws / "verify" / loss, show_progress=False, seed=0,
                                 bootstrap=REPLICATES if loss == "arcface" else 0,
                                 compare=emb_paths["softmax"] if loss == "arcface" else None)
            verify(emb_paths[loss], str(proto_path), opts)
        _write_run(ws / "runs" / "vae", "vae", 3, 1000, 100, images=True)
        options = ReportOptions(baseline="softmax", bootstrap=REPLICATES, seed=0, show_progress=False,
                                formats=("png",), examples=8)
        result = make_report([ws / "verify", ws / "runs" / "vae"], None, options)
        latest = Workspace.current().latest("report")
    return {"root": root, "ws": ws, "result": result, "latest": latest, "proto": proto}


def _metrics(study: dict, loss: str) -> dict:
    return json.loads((study["ws"] / "verify" / loss / "metrics.json").read_text())


def test_outputs_and_workspace_record(study: dict) -> None:
    res = study["result"]
    out = study["ws"] / "report"
    assert res.out_dir == out.resolve() and study["latest"] == out.resolve()
    for name in ("report.html", "report.md", "table.md", "table.csv", "table.html", "paired.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert [r.label for r in res.runs] == ["arcface", "cosface", "softmax", "vae"]
    assert res.runs[0].run_dir == (study["ws"] / "runs" / "arcface").resolve()  # linked through the embeddings
    assert not any(p.name.startswith(".fvtool-tmp") for p in out.parent.iterdir())
    # the training table: one row per training run, last history values
    rows = {r["label"]: r for r in csv.DictReader((out / "training.csv").open())}
    assert set(rows) == {*RUNS, "vae"}
    last = json.loads((study["ws"] / "runs" / "vae" / "history.jsonl").read_text().splitlines()[-1])
    assert float(rows["vae"]["last_val_eer"]) == last["val"]["eer"] and float(rows["vae"]["last_loss"]) == last["loss"]
    assert float(rows["vae"]["last_val_frr_at_far_0.01"]) == last["val"]["frr@far=0.01"]
    assert "last_val_frr_at_far_0.001" not in rows["vae"]  # null (not measurable) in every record: no column


def test_table_numbers_equal_metrics_json(study: dict) -> None:
    rows = {r["label"]: r for r in csv.DictReader((study["ws"] / "report" / "table.csv").open())}
    assert set(rows) == set(RUNS)  # the training-only run has no verification numbers
    md = (study["ws"] / "report" / "table.md").read_text()
    for loss in RUNS:
        m, row = _metrics(study, loss), rows[loss]
        assert float(row["eer"]) == m["eer"]["value"]
        assert float(row["eer_threshold"]) == m["eer"]["threshold"]
        assert float(row["auc"]) == m["auc"]["value"]
        assert float(row["accuracy_mean"]) == m["kfold"]["grid"]["accuracy_mean"]
        assert float(row["accuracy_std"]) == m["kfold"]["grid"]["accuracy_std"]
        assert int(row["n_impostor"]) == m["counts"]["impostor"] == 1500
        for op in m["operating_points"]:
            n = {1e-3: "1e-3", 1e-4: "1e-4", 1e-5: "1e-5"}.get(op["far_target"])
            if n is None:
                continue
            assert row[f"measurable_far_{n}"] == str(op["measurable"]).lower()
            assert float(row[f"attained_far_{n}"]) == op["far"]
            assert float(row[f"threshold_far_{n}"]) == op["threshold"]
            assert row[f"frr_at_far_{n}"] == (repr(op["frr"]) if op["measurable"] else "")
        # the rounded display values in the Markdown table
        line = next(x for x in md.splitlines() if x.startswith(f"| {loss} |"))
        assert f"{100 * m['eer']['value']:.2f}" in line and f"{m['auc']['value']:.4f}" in line
        acc = m["kfold"]["grid"]
        assert f"{100 * acc['accuracy_mean']:.2f} ± {100 * acc['accuracy_std']:.2f}" in line
        op3 = next(o for o in m["operating_points"] if o["far_target"] == 1e-3)
        assert f"{100 * op3['frr']:.2f} (FAR {op3['far']:.1e})" in line
        # training facts from the linked run folder
        assert row["loss"] == loss and row["epochs"] == "3" and float(row["train_seconds"]) == 3 * 32.0
    # arcface's CIs come from its verify output; the others' from the report's own identity bootstrap
    ma = _metrics(study, "arcface")
    assert float(rows["arcface"]["eer_ci_low"]) == ma["bootstrap"]["eer"]["lo"]
    assert rows["softmax"]["eer_ci_low"] != "" and float(rows["softmax"]["eer_ci_low"]) <= float(rows["softmax"]["eer"])
    # best EER marked in bold, in the row with the smallest EER only
    best = min(RUNS, key=lambda k: _metrics(study, k)["eer"]["value"])
    assert best == "arcface" and "eer" in rows["arcface"]["best"].split(";")
    assert md.count("**") // 2 == sum(len([b for b in r["best"].split(";") if b]) for r in rows.values())


def test_not_measurable_far_points_are_shown_as_such(study: dict) -> None:
    # 1500 impostors: FAR 1e-4 and 1e-5 are below 1/1500
    md = (study["ws"] / "report" / "table.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("| softmax |"))
    assert line.count("*not measurable; min FAR 6.7e-04*") == 2
    html = (study["ws"] / "report" / "report.html").read_text()
    assert html.count("not measurable; min FAR 6.7e-04") >= 6
    paired = list(csv.DictReader((study["ws"] / "report" / "paired.csv").open()))
    assert all(r["frr_at_far_1e-5_diff"] == "" for r in paired)
    assert "not measurable" in (study["ws"] / "report" / "report.md").read_text().split("\n## Paired comparison")[1]


def test_every_figure_is_a_valid_image(study: dict) -> None:
    res = study["result"]
    names = sorted(p.name for p in res.figures)
    for want in ("det.png", "roc.png", "training_curves.png", "scores_03-softmax.png",
                 "pairs_01-arcface.png", "recon_04-vae_recon_epoch001.png", "recon_04-vae_samples_epoch003.png"):
        assert want in names, names
    for p in res.figures:
        assert p.is_file() and p.stat().st_size > 0
        if p.suffix == ".svg":
            assert ET.parse(p).getroot().tag.endswith("svg")
        else:
            with Image.open(p) as im:
                im.verify()
            with Image.open(p) as im:
                assert min(im.size) > 20
    md = res.markdown.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links and all((res.out_dir / link).is_file() for link in links)
    assert len(links) == len([p for p in res.figures if p.suffix == ".png"])


def test_html_is_self_contained(study: dict) -> None:
    res = study["result"]
    page = res.html.read_text()
    assert external_references(page) == []
    n_png = len([p for p in res.figures if p.suffix == ".png"])
    assert page.count('src="data:image/png;base64,') == n_png
    for loss in RUNS:
        assert f"{loss}: score distributions" in page


def test_paired_comparison_equals_verify_compare(study: dict) -> None:
    """The report reruns verify's paired identity bootstrap on the stored scores: same seed and
    replicates give exactly the numbers `verify --compare` wrote."""
    cmp = _metrics(study, "arcface")["comparison"]
    pr = next(p for p in study["result"].paired if p.label == "arcface")
    assert pr.baseline == "softmax" and pr.source == "report" and pr.replicates == REPLICATES
    eer = next(d for d in pr.differences if d.metric == "eer")
    assert (eer.diff, eer.lo, eer.hi, eer.significant) == (cmp["eer"]["diff"], cmp["eer"]["lo"], cmp["eer"]["hi"],
                                                           cmp["eer"]["significant"])
    d3 = next(d for d in pr.differences if d.far_target == 1e-3)
    c3 = next(e for e in cmp["frr_at_far"] if e["far_target"] == 1e-3)
    assert (d3.diff, d3.lo, d3.hi) == (c3["diff"], c3["lo"], c3["hi"])
    rows = {r["label"]: r for r in csv.DictReader((study["ws"] / "report" / "paired.csv").open())}
    assert float(rows["arcface"]["eer_diff"]) == cmp["eer"]["diff"] and "softmax" not in rows


def test_example_pairs_hardest_errors_first(study: dict) -> None:
    r = next(r for r in study["result"].runs if r.label == "softmax")
    ex = select_examples(r, r.eer_threshold, 8)
    assert len(ex) == 8
    fa = [e for e in ex if not e[3] and e[2] >= r.eer_threshold]
    fr = [e for e in ex if e[3] and e[2] < r.eer_threshold]
    assert len(fa) == 4 and len(fr) == 4 and ex[:4] == fa and ex[4:] == fr
    s = r.scores
    assert fa[0][2] == s.impostor.max() and [e[2] for e in fa] == sorted((e[2] for e in fa), reverse=True)
    assert fr[0][2] == s.genuine.min()
    keys = [s.keys[e[0]] for e in ex]
    assert all((EMBEDDED_DATA / k).is_file() for k in keys)


def test_cli_log_axes_labels_threshold(study: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = study["ws"]
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.html").write_text("an older report")  # a previous report is replaced as a whole
    (out / "stale.png").write_text("x")
    args = ["report", str(ws / "verify" / "softmax"), str(ws / "verify" / "cosface"), "-o", str(out),
            "--det-axes", "log", "--label", "softmax=Softmax", "--label", "cosface=CosFace", "--bootstrap", "0",
            "--examples", "0", "--formats", "none", "--threshold", "far=1e-3"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == str(out.resolve() / "report.html")
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert "det.png" in names and not any(n.startswith("pairs_") or n.endswith(".svg") for n in names)
    assert not (out / "stale.png").exists() and not (out / "paired.csv").exists()  # --bootstrap 0: no pairing
    md = (out / "report.md").read_text()
    assert "| Softmax |" in md and "| CosFace |" in md and "log-log" in md and "FAR=1e-3 threshold" in md
    # the tables are the same numbers as in the full report (same verify outputs)
    full = {r["label"]: r for r in csv.DictReader((study["ws"] / "report" / "table.csv").open())}
    for r in csv.DictReader((out / "table.csv").open()):
        ref = full[r["label"].lower()]
        assert all(r[k] == ref[k] for k in r if k not in ("label", "best") and "_ci_" not in k), r["label"]


def test_cli_errors(study: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = study["ws"]
    cases = [
        (["report", str(ws / "verify"), "--baseline", "nope", "-o", str(tmp_path / "a")], "not one of the runs"),
        (["report", str(tmp_path / "missing")], "does not exist"),
        (["report", str(ws / "verify"), "--det-axes", "linear"], "probit or log"),
        (["report", str(ws / "verify"), "--fars", "0,1e-3"], "in (0, 1)"),
    ]
    (tmp_path / "notreport").mkdir()
    (tmp_path / "notreport" / "keep.txt").write_text("precious")
    cases.append((["report", str(ws / "verify"), "-o", str(tmp_path / "notreport")], "not an fvtool report"))
    for args, msg in cases:
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 3, args
        assert msg in capsys.readouterr().err.replace("\n", " ")
    assert (tmp_path / "notreport" / "keep.txt").read_text() == "precious"


def test_default_inputs_are_the_workspace_verify_outputs(study: dict, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.setenv("FVTOOL_WORKSPACE", str(tmp_path / "empty-ws"))
    with pytest.raises(InputError, match="no verify outputs"):
        make_report([], None, ReportOptions(show_progress=False))
    monkeypatch.setenv("FVTOOL_WORKSPACE", str(study["ws"]))
    from fvtool.reporting.stage import load_runs

    runs, _ = load_runs([], ReportOptions())
    assert sorted(r.label for r in runs) == sorted(RUNS) and all(r.run_dir is not None for r in runs)


def test_missing_far_targets_computed_like_verify(study: dict, tmp_path: Path) -> None:
    """A table FAR that verify was not asked for is computed from scores.npz by verify's rule: equal
    to what `verify --far` reports for it."""
    from fvtool.reporting.loading import read_verify_dir
    from fvtool.reporting.paired import fill_operating_points

    ws = study["ws"]
    r = read_verify_dir(ws / "verify" / "softmax")
    assert r.point(2e-3) is None
    assert fill_operating_points(r, (1e-3, 2e-3)) == [2e-3]
    ref = verify(ws / "embeddings" / "softmax.h5", str(study["root"] / "subset10.json"),
                 VerifyOptions(out=tmp_path / "v", show_progress=False, far_targets=(2e-3,))).metrics
    op = next(o for o in ref["operating_points"] if o["far_target"] == 2e-3)
    p = r.point(2e-3)
    assert (p.frr, p.far, p.measurable) == (op["frr"], op["far"], op["measurable"])
    assert p.threshold == float(np.float32(op["threshold"]))  # scores.npz stores float32 scores


def test_report_folder_permissions_follow_umask(study: dict) -> None:
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((study["ws"] / "report").stat().st_mode)
    assert mode == 0o777 & ~umask
