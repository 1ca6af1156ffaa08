"""Report building blocks on plain records: tables, figures, HTML, labels (no verify/train files).

The end-to-end tests with real verify outputs are in test_report.py.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fvtool.errors import InputError
from fvtool.reporting import figures as F
from fvtool.reporting.html import FigureItem, ReportDocument, Section, render_html, render_markdown
from fvtool.reporting.loading import apply_label_overrides, automatic_labels, expand_inputs, flatten_history
from fvtool.reporting.records import OperatingPoint, RunData
from fvtool.reporting.tables import NOT_MEASURABLE, comparison_table, duration, far_name, to_csv, to_html, to_markdown
from fvtool.verification.metrics import ScoreTable


def _run(label: str, shift: float, n_imp: int, seed: int, protocol: str = "p1") -> RunData:
    """A run whose numbers come from the verify stage's metric rules on seeded normal scores."""
    rng = np.random.default_rng(seed)
    gen = rng.normal(shift, 1.0, 600)
    imp = rng.normal(0.0, 1.0, n_imp)
    t = ScoreTable.from_scores(imp, gen)
    e = t.eer()
    _, pfa, pmiss = t.roc_points()
    pts = []
    for f in (1e-3, 1e-4, 1e-5):
        op = t.frr_at_far(f)
        pts.append(OperatingPoint(f, op.frr if op.measurable else None, op.far, op.threshold, op.measurable,
                                  (op.frr * 0.9, min(1.0, op.frr * 1.1)) if op.measurable else None))
    return RunData(label=label, loss=label.split()[0], backbone="resnet-small", input_size="64x64",
                   train_images=7829, train_identities=1505, epochs=10, train_seconds=612.4,
                   protocol=protocol, protocol_sha256=protocol, n_genuine=len(gen), n_impostor=n_imp,
                   accuracy_mean=0.8 + shift / 20, accuracy_std=0.01, eer=e.value, eer_threshold=e.threshold,
                   eer_ci=(e.value * 0.8, e.value * 1.2), auc=t.auc(), points=pts, det_far=pfa, det_frr=pmiss,
                   hist_edges=(edges := np.linspace(min(gen.min(), imp.min()), max(gen.max(), imp.max()), 101)),
                   hist_genuine=np.histogram(gen, edges)[0], hist_impostor=np.histogram(imp, edges)[0])


@pytest.fixture(scope="module")
def runs() -> list[RunData]:
    return [_run("softmax", 2.0, 600, 1), _run("arcface", 3.0, 20000, 2), _run("cosface", 2.5, 600, 3)]


def test_table_numbers_best_marks_and_not_measurable(runs: list[RunData]) -> None:
    t = comparison_table(runs)
    recs = list(csv.DictReader(io.StringIO(to_csv(t))))
    for r, rec in zip(runs, recs, strict=True):
        assert float(rec["eer"]) == r.eer  # full precision, exactly the input value
        assert float(rec["auc"]) == r.auc
        assert float(rec["accuracy_mean"]) == r.accuracy_mean
        for f in (1e-3, 1e-4, 1e-5):
            p = r.point(f)
            assert rec[f"measurable_far_{far_name(f)}"] == ("true" if p.measurable else "false")
            assert rec[f"frr_at_far_{far_name(f)}"] == ("" if not p.measurable else repr(p.frr))
            assert float(rec[f"attained_far_{far_name(f)}"]) == p.far
    # 600 impostors: FAR 1e-3 is below 1/600 -> not measurable; 20,000: 1e-4 measurable, 1e-5 not
    assert recs[0]["measurable_far_1e-3"] == "false" and recs[1]["measurable_far_1e-4"] == "true"
    md = to_markdown(t)
    softmax_line = next(line for line in md.splitlines() if line.startswith("| softmax"))
    assert f"*{NOT_MEASURABLE}; min FAR 1.7e-03*" in softmax_line
    # best EER is the run with the largest shift (arcface), in bold, and only there
    best_eer = min(r.eer for r in runs)
    assert f"**{100 * best_eer:.2f} [" in md
    assert md.count(f"{100 * best_eer:.2f} [") == 1
    assert recs[1]["best"].split(";").count("eer") == 1 and "eer" not in recs[0]["best"].split(";")
    # FRR@1e-3 only measurable for arcface: a single value is not marked best (nothing to compare)
    assert "frr_at_far_1e-3" not in recs[1]["best"].split(";")
    html = to_html(t)
    assert html.count('class="best"') == sum(len([b for b in rec["best"].split(";") if b]) for rec in recs)
    assert html.count('class="note"') == 3 + 1 + 3  # not measurable: softmax 3, arcface 1 (1e-5), cosface 3


def test_best_is_marked_within_protocol_only() -> None:
    a, b = _run("a x", 2.0, 600, 1, protocol="p1"), _run("b x", 3.0, 600, 2, protocol="p2")
    t = comparison_table([a, b])
    assert all(not c.best for row in t.rows for c in row)
    assert any("different protocols" in n for n in t.footnotes)


def test_duration_and_far_names() -> None:
    assert [duration(s) for s in (None, 44.6, 192, 3725)] == ["", "45s", "3m 12s", "1h 02m"]
    assert [far_name(f) for f in (1e-3, 1e-5, 0.05)] == ["1e-3", "1e-5", "0.05"]


def _is_image(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    if path.suffix == ".svg":
        assert path.read_text().lstrip().startswith("<?xml") and "</svg>" in path.read_text()
    elif path.suffix == ".pdf":
        assert path.read_bytes().startswith(b"%PDF")
    else:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_figures_are_valid_and_deterministic(runs: list[RunData], tmp_path: Path) -> None:
    r = runs[0]
    files = {}
    files |= {f"det_log.{k}": v for k, v in F.save_figure(F.det_figure(runs, "log"), tmp_path / "det_log").items()}
    files |= {f"roc.{k}": v for k, v in F.save_figure(F.roc_figure(runs), tmp_path / "roc").items()}
    fig = F.score_histogram_figure(r.label, r.hist_edges, r.hist_genuine, r.hist_impostor,
                                   {"EER threshold": r.eer_threshold}, 0.9)
    files |= {f"hist.{k}": v for k, v in F.save_figure(fig, tmp_path / "hist", ("png",)).items()}
    hashes = []
    for rep in range(2):  # rerun: byte-identical files (no dates, versions or random ids)
        det = F.save_figure(F.det_figure(runs, "probit"), tmp_path / f"r{rep}" / "det", ("png", "svg", "pdf"))
        files |= {f"det{rep}.{k}": v for k, v in det.items()}
        hashes.append({k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in det.items()})
    assert hashes[0] == hashes[1]
    for p in files.values():
        _is_image(p)


def test_det_notes_not_measurable_points(runs: list[RunData]) -> None:
    fig = F.det_figure(runs, "probit", mark_fars=(1e-4, 1e-5))
    texts = [t.get_text() for t in fig.texts]
    F.plt.close(fig)
    note = "\n".join(texts)
    assert "FAR=1e-4 not measurable with 600 impostors: softmax, cosface" in note
    assert "FAR=1e-5 not measurable with 20,000 impostors: arcface" in note
    assert "FAR=1e-4 not measurable with 20,000" not in note


def test_probit_ticks_match_normal_deviates() -> None:
    from scipy.special import ndtri

    # metrics-spec: probit(0.001, 0.01, 0.1) = -3.0902, -2.3263, -1.2816
    np.testing.assert_allclose(ndtri([0.001, 0.01, 0.1]), [-3.0902, -2.3263, -1.2816], atol=1e-4)
    assert [F.probability_label(p) for p in (1e-5, 1e-3, 0.05, 0.5)] == ["1e-5", "1e-3", "0.05", "0.5"]


def test_training_curves_and_pair_grid(tmp_path: Path) -> None:
    hist = flatten_history([
        {"kind": "epoch", "epoch": e, "step": 10 * e, "loss": 3.0 / e, "components": {"ce": 2.0 / e, "center": 1.0 / e},
         "train_accuracy": 0.1 * e, "val": {"accuracy": 0.7 + 0.02 * e, "eer": 0.3 - 0.02 * e, "frr@far=0.001": None}}
        for e in range(1, 5)] + [{"kind": "eval", "epoch": 2, "step": 15, "val": {"eer": 0.25}}], steps_per_epoch=10)
    assert hist[-1]["epoch"] == 1.5 and "val/frr@far=0.001" not in hist[0]
    panels = [F.Panel("Loss", ("loss",), "loss"), F.Panel("Components", ("components/ce", "components/center"), "x"),
              F.Panel("Validation EER", ("val/eer",), "%", True), F.Panel("absent", ("nothing",), "")]
    fig = F.training_curves_figure([("a", 0, hist)], panels)
    assert sum(ax.get_visible() for ax in fig.axes) == 3
    _is_image(F.save_figure(fig, tmp_path / "curves")["png"])
    assert F.training_curves_figure([("a", 0, hist)], [F.Panel("absent", ("nothing",), "")]) is None
    img = np.zeros((40, 40, 3), np.uint8)
    ex = [F.PairExample(img, None, "a/1.jpg", "b/1.jpg", 0.8, False, True),
          F.PairExample(img, img, "a/1.jpg", "a/2.jpg", 0.1, True, False)]
    assert [e.outcome for e in ex] == ["FALSE ACCEPT", "FALSE REJECT"] and not any(e.correct for e in ex)
    _is_image(F.save_figure(F.pair_grid_figure("run", ex, 0.5), tmp_path / "pairs")["png"])


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "action", "poster", "xlink:href") and value is not None:
                self.refs.append(value)


def external_references(html_text: str) -> list[str]:
    """Every reference in the page that would load something from outside it."""
    p = _Refs()
    p.feed(html_text)
    bad = [r for r in p.refs if not (r.startswith("data:") or r.startswith("#"))]
    bad += [t for t in p.tags if t in ("script", "link", "iframe", "object", "embed")]
    low = html_text.lower()
    bad += [m for m in ("@import", "url(", "http://", "https://", "//cdn") if m in low]
    return bad


def test_html_is_self_contained_and_markdown_links_files(runs: list[RunData], tmp_path: Path) -> None:
    fig = F.save_figure(F.roc_figure(runs), tmp_path / "figures" / "roc", ("png", "svg"))
    doc = ReportDocument("T <&>", ["intro"], [Section("Tables", [comparison_table(runs)]),
                                             Section("Figures", [FigureItem("ROC", fig, "cap"), "para"])],
                         inputs=["/x/y"])
    page = render_html(doc)
    assert external_references(page) == []
    assert page.count("data:image/png;base64,") == 1 and "T &lt;&amp;&gt;" in page
    md = render_markdown(doc, tmp_path)
    assert "![ROC](figures/roc.png)" in md and "figures/roc.svg" in md
    assert external_references('<a href="https://x.org">') and external_references("<script></script>")


def test_labels_from_config_and_overrides() -> None:
    cfgs = [{"loss": "softmax", "backbone": "r", "epochs": 10, "mining": None},
            {"loss": "arcface", "backbone": "r", "epochs": 10},
            {"loss": "triplet", "backbone": "r", "epochs": 20, "mining": "hard"}]
    labels = automatic_labels(cfgs, ["a", "b", "c"])
    assert labels == ["softmax 10ep", "arcface 10ep", "triplet+hard 20ep"]
    assert automatic_labels([{"loss": "x"}, {"loss": "x"}], ["f1", "f2"]) == ["x (f1)", "x (f2)"]
    assert automatic_labels([{}, {"loss": "x"}], ["f1", "f2"]) == ["f1", "x"]
    assert apply_label_overrides(labels, ["a", "b", "c"], ["b=ArcFace", "softmax 10ep=Softmax"]) == \
        ["Softmax", "ArcFace", "triplet+hard 20ep"]
    assert apply_label_overrides(labels, ["a", "b", "c"], ["One", "Two"])[:2] == ["One", "Two"]
    with pytest.raises(InputError, match="no run is labelled"):
        apply_label_overrides(labels, ["a", "b", "c"], ["zzz=1"])
    with pytest.raises(InputError, match="unique"):
        apply_label_overrides(labels, ["a", "b", "c"], ["X", "X"])


def test_expand_inputs(tmp_path: Path) -> None:
    v = tmp_path / "verify"
    for name in ("b", "a"):
        (v / name).mkdir(parents=True)
        (v / name / "metrics.json").write_text(json.dumps({}))
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "history.jsonl").write_text("")
    found = expand_inputs([str(v), str(tmp_path / "runs" / "*")])
    assert [p.name for p in found.verify_dirs] == ["a", "b"] and [p.name for p in found.run_dirs] == ["r1"]
    with pytest.raises(InputError, match="does not exist"):
        expand_inputs([tmp_path / "nope"])
    with pytest.raises(InputError, match="matches nothing"):
        expand_inputs([str(tmp_path / "nope*")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither a verify output"):
        expand_inputs([tmp_path / "empty"])


def test_baselines_per_protocol() -> None:
    from fvtool.reporting.stage import pick_baselines

    def run(label: str, base: str, proto: str) -> RunData:
        return RunData(label=label, base_label=base, verify_dir=Path(f"/v/{label}"), protocol=proto,
                       protocol_sha256=proto)

    runs = [run("a @p1", "a", "p1"), run("b @p1", "b", "p1"), run("a @p2", "a", "p2"), run("b @p2", "b", "p2"),
            run("c @p3", "c", "p3")]
    assert {g: r.label for g, r in pick_baselines(runs, None).items()} == {"p1": "a @p1", "p2": "a @p2"}
    assert {g: r.label for g, r in pick_baselines(runs, "b").items()} == {"p1": "b @p1", "p2": "b @p2"}
    assert {g: r.label for g, r in pick_baselines(runs, "b @p2").items()} == {"p2": "b @p2"}
    with pytest.raises(InputError, match="not one of the runs"):
        pick_baselines(runs, "zz")
    assert automatic_labels([{"loss": "a", "protocol": "p1"}, {"loss": "a", "protocol": "p2"}], ["x", "y"]) == \
        ["a @p1", "a @p2"]
    assert automatic_labels([{"loss": "a", "protocol": "p1"}, {"loss": "b", "protocol": "p1"}], ["x", "y"]) == \
        ["a", "b"]


def test_coarsen_histograms_keeps_counts() -> None:
    edges = np.linspace(-1, 1, 201)
    g = np.random.default_rng(0).integers(0, 5, 200)
    i = np.random.default_rng(1).integers(0, 500, 200)
    e2, g2, i2 = F.coarsen_histograms(edges, g, i)
    assert g2.sum() == g.sum() and i2.sum() == i.sum() and len(e2) == len(g2) + 1 < len(edges)
    assert set(e2.tolist()) <= set(edges.tolist()) and e2[0] == -1 and e2[-1] == 1
    big = np.full(200, 10_000)
    assert len(F.coarsen_histograms(edges, big, big)[0]) == len(edges)  # enough data: no merging


def test_autoencoder_labels_name_the_reconstruction_loss() -> None:
    from fvtool.reporting.loading import automatic_labels

    labels = automatic_labels([{"loss": "vae", "recon": "bce"}, {"loss": "vae", "recon": "mse"},
                               {"loss": "softmax", "recon": None}], ["a", "b", "c"])
    assert labels == ["vae (bce)", "vae (mse)", "softmax"]


def test_protocol_aliases_keep_labels_short() -> None:
    """Generated protocol names made labels wrap to nine lines (issue #17): short names stay, long ones
    lose the words they share, else become their kind (numbered when several share it)."""
    from fvtool.reporting.loading import protocol_aliases

    assert protocol_aliases(["demo-kfold", "demo-allpairs"], ["pairs", "allpairs"]) == {
        "demo-kfold": "demo-kfold", "demo-allpairs": "demo-allpairs"}
    long = ["lfw-subset-allpairs-lfw-subset-split-s0-test", "lfw-subset-lfw-subset-split-s0-test-k4-n100-s0"]
    assert protocol_aliases(long, ["allpairs", "pairs"]) == dict(zip(long, ["allpairs", "pairs"], strict=True))
    shared = ["study-lfw-fold10-view2-refold10-seed0", "study-lfw-fold10-val-allpairs-seed0"]
    assert protocol_aliases(shared, ["pairs", "allpairs"]) == dict(zip(shared, ["view2-refold10", "val-allpairs"],
                                                                       strict=True))
    three = ["a-very-long-protocol-name-number-one", "another-very-long-protocol-name-2", "x" * 20]
    assert list(protocol_aliases(three, ["pairs", "pairs", "allpairs"]).values()) == ["pairs-1", "pairs-2",
                                                                                      "allpairs"]


def test_comparison_table_is_narrow_and_protocols_have_a_legend(runs: list[RunData]) -> None:
    from fvtool.reporting.tables import protocol_table, training_table

    runs = [replace(r, protocol_alias="p", protocol_kind="pairs", verify_dir=Path("v") / r.label) for r in runs]
    t = comparison_table(runs, (1e-2, 1e-3, 1e-4, 1e-5))
    assert t.headers[:3] == ["Run", "Protocol", "k-fold accuracy (%) mean ± std [CI]"]  # no training facts
    assert t.headers[-1] == "AUC [CI]" and len(t.headers) == 9
    rec = next(iter(csv.DictReader(io.StringIO(to_csv(t)))))
    assert rec["train_seconds"] == "612.4" and rec["loss"] == "softmax"  # the CSV keeps every fact
    legend = protocol_table(runs)  # one row per protocol: runs sharing it give one row
    assert [[c.text for c in row][:2] for row in legend.rows] == [["p", "p1"]]
    runs[0] = replace(runs[0], train_img_per_s=183.4)
    tt = training_table(runs)
    assert "img/s" in tt.headers and tt.rows[0][tt.headers.index("img/s")].text == "183"
    assert any("wall-clock" in n for n in tt.footnotes)


def test_loss_panels_each_on_their_own_axis(tmp_path: Path) -> None:
    """n_triplets (128) must not flatten the other statistics; losses of different scale are compared
    relative to their first epoch."""
    from fvtool.reporting.stage import _component_panels, _training_panels

    hist = [{"epoch": e, "loss": 40.0 - e, "components/a": 1.0 / e, "components/b": 2.0,
             "stats/n_triplets": 128.0, "stats/frac_active": 0.5 / e} for e in (1, 2, 3)]
    r = RunData(label="r", history=hist)
    panels = _component_panels(r)
    assert [p.keys for p in panels] == [("loss",), ("components/a",), ("components/b",), ("stats/frac_active",),
                                        ("stats/n_triplets",)]
    fig = F.training_curves_figure([("r", 0, hist)], panels)
    assert sum(ax.get_visible() for ax in fig.axes) == 5
    rel = _training_panels([r])[0]
    assert rel.relative
    small = [{"epoch": e, "loss": 0.2 / e} for e in (1, 2)]
    fig = F.training_curves_figure([("big", 0, hist), ("small", 1, small)], [rel])
    ys = [line.get_ydata() for line in fig.axes[0].get_lines()]
    np.testing.assert_allclose(ys[0], [1.0, 38 / 39, 37 / 39])
    np.testing.assert_allclose(ys[1], [1.0, 0.5])
