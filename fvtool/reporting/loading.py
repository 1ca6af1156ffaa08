"""Read verify output folders and training run folders into `RunData` records.

This is the one module that knows the on-disk formats (docs/formats.md "Verify output" and
"Training run folder"); everything after it works on `RunData`.

Inputs may be verify folders (they hold `metrics.json`), run folders (`config.json` +
`history.jsonl`), folders holding several of either (e.g. `fvwork/verify`), or globs. A verify
output is linked to the training run its embeddings came from (by the run/checkpoint recorded in
its provenance, else by checkpoint hash among the given and workspace runs); a run folder with
no verify output still contributes its training curves.

Labels: built from the run config fields that tell the runs apart (loss, miner, backbone,
data, epochs; loss always), so three losses on one backbone read "softmax", "arcface",
"cosface" rather than the same long string thrice; `--label` overrides.
"""

from __future__ import annotations

import csv
import glob
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fvtool.atomic import sha256_file
from fvtool.errors import InputError
from fvtool.protocols.model import check_name
from fvtool.reporting.records import IdentifyRecord, RunData, ScoreSet
from fvtool.verification.record import METRICS_NAME, VerifyMetrics, check_header

RUN_CONFIG_NAME = "config.json"
HISTORY_NAME = "history.jsonl"
RUN_IMAGES_DIRNAME = "images"


# ---- finding inputs -----------------------------------------------------------------------------

def is_verify_dir(p: Path) -> bool:
    return (p / METRICS_NAME).is_file()


def is_run_dir(p: Path) -> bool:
    return (p / RUN_CONFIG_NAME).is_file() and ((p / HISTORY_NAME).is_file() or (p / "checkpoints").is_dir())


@dataclass
class FoundInputs:
    verify_dirs: list[Path]
    run_dirs: list[Path]


def expand_inputs(inputs: Sequence[str | Path]) -> FoundInputs:
    """Globs and container folders -> verify folders and run folders (each once, in input order)."""
    verify: list[Path] = []
    runs: list[Path] = []

    def add(p: Path, explicit: bool) -> None:
        p = p.resolve()
        if is_verify_dir(p):
            if p not in verify:
                verify.append(p)
        elif is_run_dir(p):
            if p not in runs:
                runs.append(p)
        elif p.is_dir():
            children = sorted(c for c in p.iterdir() if c.is_dir() and (is_verify_dir(c) or is_run_dir(c)))
            if not children and explicit:
                raise InputError(f"{p} is neither a verify output (no {METRICS_NAME}) nor a training run folder "
                                 f"(no {RUN_CONFIG_NAME} + {HISTORY_NAME}), and holds none")
            for c in children:
                add(c, False)
        elif explicit:
            if p.is_file() and p.name == METRICS_NAME:
                add(p.parent, True)
            else:
                raise InputError(f"{p} does not exist (expected a verify output folder or a training run folder)")

    for item in inputs:
        text = str(item)
        if glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise InputError(f"{text!r} matches nothing")
            for m in matches:
                add(Path(m), False)
        else:
            add(Path(text), True)
    return FoundInputs(verify, runs)


# ---- JSON helpers -------------------------------------------------------------------------------

def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def get(d: Any, *path: str, default: Any = None) -> Any:
    """Nested lookup that tolerates missing levels: get(m, 'kfold', 'mean')."""
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def num(v: Any) -> float | None:
    """A finite float, or None for missing / null / non-numeric values."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def integer(v: Any) -> int | None:
    f = num(v)
    return None if f is None else int(f)


# ---- verify output folders -----------------------------------------------------------------------



def read_curve_csv(path: Path, columns: tuple[str, str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Two columns of det.csv / roc.csv as float arrays (None when the file is absent)."""
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: column(s) {', '.join(missing)} missing (header {reader.fieldnames})")
            rows = [(r[columns[0]], r[columns[1]]) for r in reader]
        a = np.array([float(x) for x, _ in rows], dtype=np.float64)
        b = np.array([float(y) for _, y in rows], dtype=np.float64)
    except ValueError as e:
        raise InputError(f"{path}: not a numeric curve file ({e})") from None
    return a, b


def read_scores(path: Path) -> ScoreSet | None:
    """scores.npz, loaded without pickle (files from others are data, never code)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            need = ("genuine", "genuine_a", "genuine_b", "impostor", "impostor_a", "impostor_b", "keys", "identities")
            missing = [k for k in need if k not in z.files]
            if missing:
                raise InputError(f"{path}: array(s) {', '.join(missing)} missing")
            opt = {k: z[k] for k in ("hist_edges", "hist_genuine", "hist_impostor") if k in z.files}
            imp = z["impostor"].astype(np.float64)
            return ScoreSet(
                genuine=z["genuine"].astype(np.float64), gen_a=z["genuine_a"].astype(np.int64),
                gen_b=z["genuine_b"].astype(np.int64), impostor=imp, imp_a=z["impostor_a"].astype(np.int64),
                imp_b=z["impostor_b"].astype(np.int64),
                impostor_complete=bool(z["impostor_complete"]) if "impostor_complete" in z.files else True,
                n_impostor=int(z["n_impostor"]) if "n_impostor" in z.files else len(imp),
                keys=z["keys"].astype(str), identities=z["identities"].astype(str),
                hist_edges=opt.get("hist_edges"), hist_genuine=opt.get("hist_genuine"),
                hist_impostor=opt.get("hist_impostor"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read the scores file ({e})") from None


def read_verify_dir(folder: Path) -> RunData:
    """One verify output (docs/formats.md "Verify output") as a RunData labelled by its folder name."""
    m = read_json(folder / METRICS_NAME)
    rec = VerifyMetrics.from_json(m, folder / METRICS_NAME)
    attrs = rec.embeddings.get("attrs") or {}
    r = RunData(label=folder.name, verify_dir=folder, metrics_raw=m)
    r.backbone = attrs.get("backbone") or None
    r.loss = attrs.get("loss") or None
    r.input_size = _input_size(attrs.get("input_size"))
    r.data_root = Path(attrs["data_root"]) if attrs.get("data_root") else None
    r.embeddings_sha256 = rec.embeddings.get("sha256")
    r.protocol = rec.protocol.get("name")
    r.protocol_sha256 = rec.protocol.get("sha256")
    r.protocol_identities = integer(rec.protocol.get("identities"))
    r.protocol_kind = rec.protocol.get("kind")
    r.protocol_images = integer(rec.protocol.get("images"))
    r.metric = rec.scoring.get("metric")
    r.n_genuine = integer(rec.counts.get("genuine"))
    r.n_impostor = integer(rec.counts.get("impostor"))
    kf = (rec.kfold or {}).get("grid")
    if isinstance(kf, dict):
        r.accuracy_mean = num(kf.get("accuracy_mean"))
        r.accuracy_std = num(kf.get("accuracy_std"))
    r.eer = num(rec.eer.get("value"))
    r.eer_threshold = num(rec.eer.get("threshold"))
    boot = rec.bootstrap or {}
    if num(get(boot, "eer", "lo")) is not None:
        r.eer_ci = (float(boot["eer"]["lo"]), float(boot["eer"]["hi"]))
    r.auc = num(rec.auc.get("value"))
    r.intersection_threshold = num(rec.intersection.get("threshold"))
    r.points = list(rec.operating_points)
    files = rec.files

    def member(key: str, default: str) -> Path:
        # a name in the folder, never a path elsewhere: verify folders may come from others
        return folder / check_name(files.get(key) or default, f"{folder / METRICS_NAME}: files.{key}")

    det = read_curve_csv(member("det", "det.csv"), ("far", "frr"))
    if det is not None:
        r.det_far, r.det_frr = det
    roc = read_curve_csv(member("roc", "roc.csv"), ("far", "tar"))
    if roc is not None:
        r.roc_far, r.roc_tar = roc
    r.scores = read_scores(member("scores", "scores.npz"))
    if r.scores is not None and r.scores.hist_edges is not None:
        r.hist_edges, r.hist_genuine, r.hist_impostor = (r.scores.hist_edges, r.scores.hist_genuine,
                                                         r.scores.hist_impostor)
    return r


def linked_run_dir(r: RunData, candidates: Sequence[Path]) -> Path | None:
    """The training run a verify output's embeddings came from: the `run` the embed stage recorded
    (when that folder still exists), else the candidate run whose checkpoint has the recorded hash."""
    attrs = get(r.metrics_raw, "embeddings", "attrs", default={}) or {}
    recorded = attrs.get("run")
    if recorded and is_run_dir(Path(recorded)):
        return Path(recorded).resolve()
    ckpt = attrs.get("checkpoint")
    if ckpt and is_run_dir(Path(ckpt).parent.parent):
        return Path(ckpt).parent.parent.resolve()
    sha = attrs.get("checkpoint_sha256")
    if sha:
        for run in candidates:
            for c in sorted((run / "checkpoints").glob("*.pt")):
                if sha256_file(c) == sha:
                    return run
    return None


# ---- closed-set identification results (`fvtool identify` JSON) ------------------------------------

IDENTIFY_FORMAT = "fvtool-identify"


def read_identify_file(path: Path) -> tuple[str | None, str, IdentifyRecord]:
    """(embeddings sha256, created, record) of one identify JSON (docs/formats.md "Identify output")."""
    m = check_header(read_json(path), IDENTIFY_FORMAT, 1, path)
    rec = IdentifyRecord(
        classifier=str(get(m, "protocol", "classifier") or "?"), top1=num(get(m, "accuracy", "top1")),
        top5=num(get(m, "accuracy", "top5")), balanced_top1=num(get(m, "accuracy", "balanced_top1")),
        classes=integer(get(m, "counts", "classes")), test_images=integer(get(m, "counts", "test_images")),
        split_sha256=get(m, "protocol", "split_sha256"), path=path)
    return get(m, "embeddings", "sha256"), str(m.get("created") or ""), rec


def _is_open_set(path: Path) -> bool:
    m = read_json(path)
    return isinstance(m, dict) and m.get("format") == "fvtool-openset"


def attach_identify(runs: Sequence[RunData], sources: Sequence[Path], explicit: bool) -> list[str]:
    """Fill `RunData.identify` from identify JSONs (files, or the *.json of folders) whose embeddings
    hash is the run's. Several results for one file and classifier: the newest is shown (warning).
    Explicit sources must exist and be identify files; in default folders other files are skipped."""
    warnings: list[str] = []
    files: list[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_dir():
            files += sorted(p for p in src.glob("*.json") if p.is_file() and not p.name.startswith("."))
        elif src.is_file():
            files.append(src)
        elif explicit:
            raise InputError(f"identify result {src} does not exist (expected an `fvtool identify` JSON or folder)")
    found: dict[tuple[str, str], list[tuple[str, str, IdentifyRecord]]] = {}
    for f in dict.fromkeys(p.resolve() for p in files):
        try:
            sha, created, rec = read_identify_file(f)
        except InputError:
            if explicit and not _is_open_set(f):  # open-set results have their own report section
                raise
            continue
        if sha:
            found.setdefault((sha, rec.classifier), []).append((created, str(f), rec))
    for r in runs:
        for (sha, clf), entries in found.items():
            if sha != r.embeddings_sha256:
                continue
            entries.sort(key=lambda e: (e[0], e[1]))
            r.identify[clf] = entries[-1][2]
            if len(entries) > 1:
                warnings.append(f"{r.label}: {len(entries)} identify results for its embeddings with classifier "
                                f"{clf}; showing the newest, {entries[-1][1]}")
    return warnings


# ---- training run folders -----------------------------------------------------------------------

def read_history(path: Path) -> list[dict[str, Any]]:
    """history.jsonl: one JSON object per line; a truncated last line (killed run) is skipped."""
    if not path.is_file():
        return []
    out: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):
                break
            raise InputError(f"{path}, line {n}: not valid JSON ({e})") from None
        if not isinstance(rec, dict):
            raise InputError(f"{path}, line {n}: expected a JSON object")
        out.append(rec)
    return out


def flatten(rec: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numeric fields -> {'val/eer': 0.1, 'components/ce': 2.3, ...}; other values dropped."""
    out: dict[str, float] = {}
    for k, v in rec.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            f = num(v)
            if f is not None:
                out[key] = f
    return out


def flatten_history(records: list[dict[str, Any]], steps_per_epoch: int | None = None) -> list[dict[str, float]]:
    """Flat records for the training-curve figure, `epoch` on a continuous axis: with the batches
    per epoch known, step-based evaluation records sit at step / batches_per_epoch (epoch records
    at their epoch number, as before)."""
    out = []
    for rec in records:
        if "epoch" not in rec:
            continue
        flat = flatten(rec)
        step = num(rec.get("step"))
        if steps_per_epoch and step is not None and rec.get("kind") == "eval":
            flat["epoch"] = step / steps_per_epoch
        out.append(flat)
    return out


def _config_view(cfg: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields, whether config.json nests them under 'config' or not."""
    inner = cfg.get("config")
    return inner if isinstance(inner, dict) else cfg


def _input_size(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, list | tuple):
        return "x".join(str(x) for x in v)
    return f"{v}x{v}" if isinstance(v, int) else str(v)


def fill_from_run(r: RunData, run_dir: Path) -> None:
    """Training facts, history and reconstruction images from a run folder."""
    cfg_all = read_json(run_dir / RUN_CONFIG_NAME)
    if not isinstance(cfg_all, dict):
        raise InputError(f"{run_dir / RUN_CONFIG_NAME}: expected a JSON object")
    cfg = _config_view(cfg_all)
    data_facts = get(cfg_all, "resolved", "data", default={}) or {}
    r.run_dir = run_dir
    r.loss = r.loss or cfg.get("loss")
    r.miner = r.miner or cfg.get("mining")
    r.backbone = r.backbone or cfg.get("backbone")
    r.input_size = r.input_size or _input_size(cfg.get("input_size"))
    r.data = r.data or (Path(cfg["data"]).name if cfg.get("data") else None)
    r.train_images = integer(data_facts.get("n_train_images"))
    r.train_identities = integer(data_facts.get("num_classes"))
    history = read_history(run_dir / HISTORY_NAME)
    epochs = [rec for rec in history if rec.get("kind", "epoch") == "epoch"]
    r.epochs = max((integer(rec.get("epoch")) or 0 for rec in epochs), default=None) or integer(cfg.get("epochs"))
    seconds = [num(rec.get("time_s")) for rec in epochs]
    val_seconds = [num(get(rec, "val", "time_s")) for rec in history]
    if any(s is not None for s in seconds):
        r.train_seconds = sum(s for s in seconds if s) + sum(s for s in val_seconds if s)
        step_s = sum(s for s in seconds if s)
        images = sum(integer(rec.get("images")) or 0 for rec in epochs)
        r.train_img_per_s = images / step_s if step_s > 0 and images > 0 else None
    r.history = flatten_history(history, integer(get(cfg_all, "resolved", "sampler", "batches_per_epoch")))
    images_dir = run_dir / RUN_IMAGES_DIRNAME
    if images_dir.is_dir():
        r.recon_images = sorted(p for p in images_dir.glob("*.png") if p.is_file() and not p.name.startswith("."))
    r.metrics_raw.setdefault("run_config", cfg_all)


def run_config_fields(run_dir: Path | None) -> dict[str, Any]:
    if run_dir is None:
        return {}
    return _config_view(read_json(run_dir / RUN_CONFIG_NAME))


# ---- labels -------------------------------------------------------------------------------------

LABEL_FIELDS = ("loss", "recon", "mining", "backbone", "data", "epochs", "protocol")


def _fmt_field(name: str, v: Any) -> str:
    if name == "mining":
        return f"+{v}"
    if name == "recon":
        return f"({v})"
    if name == "epochs":
        return f"{v}ep"
    if name == "data":
        return Path(str(v)).name
    if name == "protocol":
        return f"@{v}"
    return str(v)


def automatic_labels(configs: Sequence[dict[str, Any]], fallbacks: Sequence[str], unique: bool = True) -> list[str]:
    """Labels from the config fields that differ between runs (the loss always; `protocol`, when the
    caller adds it, only when runs were verified on different protocols), made unique with the
    fallback (folder name) when two runs still read the same."""
    def values(f: str) -> set[str]:  # a run without a protocol (training only) does not make protocols differ
        return {json.dumps(c.get(f), sort_keys=True) for c in configs if c and (f != "protocol" or c.get(f))}

    differing = [f for f in LABEL_FIELDS if len(values(f)) > 1]
    labels = []
    for cfg, fb in zip(configs, fallbacks, strict=True):
        if not cfg:
            labels.append(fb)
            continue
        parts = []
        for f in LABEL_FIELDS:
            v = cfg.get(f)
            if v is None or v == "":
                continue
            if f == "recon" and cfg.get("loss") not in ("ae", "vae"):
                continue  # the reconstruction loss only names AE/VAE runs
            if f == "loss" or f in differing:
                parts.append(_fmt_field(f, v))
        text = " ".join(parts).replace(" +", "+") or fb
        labels.append(text)
    if not unique:
        return labels
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    return [f"{lab} ({fb})" if counts[lab] > 1 and lab != fb else lab
            for lab, fb in zip(labels, fallbacks, strict=True)]


MAX_ALIAS = 16  # characters: a protocol name up to this long is its own alias


def protocol_aliases(names: Sequence[str], kinds: Sequence[str | None]) -> dict[str, str]:
    """Short names for protocols in run labels and table cells, the full names going to a legend.

    Generated names such as `lfw-subset-allpairs-lfw-subset-split-s0-test` made labels wrap to nine
    lines in the report (issue #17). Names up to MAX_ALIAS characters stay; otherwise the names
    without the `-`-separated words they all share at the start and end, when those are short and
    distinct; otherwise the protocol kind (`pairs`, `allpairs`), numbered when several share it.
    `names` are distinct, `kinds[i]` belongs to `names[i]`."""
    names = list(names)
    if all(len(n) <= MAX_ALIAS for n in names):
        return {n: n for n in names}
    words = [n.split("-") for n in names]
    if len(names) > 1:
        head = 0
        while all(len(w) > head + 1 for w in words) and len({w[head] for w in words}) == 1:
            head += 1
        tail = 0
        while all(len(w) > head + tail + 1 for w in words) and len({w[-1 - tail] for w in words}) == 1:
            tail += 1
        short = ["-".join(w[head:len(w) - tail]) for w in words]
        if all(0 < len(x) <= MAX_ALIAS for x in short) and len(set(short)) == len(short):
            return dict(zip(names, short, strict=True))
    base = [k or "protocol" for k in kinds]
    seen: dict[str, int] = {}
    out = {}
    for n, b in zip(names, base, strict=True):
        seen[b] = seen.get(b, 0) + 1
        out[n] = b if base.count(b) == 1 else f"{b}-{seen[b]}"
    return out


def apply_label_overrides(labels: list[str], names: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """`OLD=NEW` renames the run whose automatic label or folder name is OLD; a bare `NEW` renames
    the runs in order. Unknown OLD names and duplicate results are errors."""
    out = list(labels)
    positional = [o for o in overrides if "=" not in o]
    if len(positional) > len(out):
        raise InputError(f"--label given {len(positional)} plain labels for {len(out)} runs")
    for i, new in enumerate(positional):
        out[i] = new
    for o in overrides:
        if "=" not in o:
            continue
        old, new = o.split("=", 1)
        hits = [i for i, (lab, name) in enumerate(zip(labels, names, strict=True)) if old in (lab, name)]
        if not hits:
            raise InputError(f"--label {o!r}: no run is labelled or named {old!r} (runs: {', '.join(labels)})")
        for i in hits:
            out[i] = new
    dup = sorted({lab for lab in out if out.count(lab) > 1})
    if dup:
        raise InputError(f"run labels must be unique; {', '.join(dup)} appear more than once (use --label OLD=NEW)")
    return out
