"""All-pairs verification at scale: fvtool's streaming vs the GEMM floor vs scikit-learn.

    .venv/bin/python bench/bench_allpairs.py                 # N = 13,233 (LFW sizes) and N = 100,000
    .venv/bin/python bench/bench_allpairs.py --big 0         # skip the N = 100,000 run
    .venv/bin/python bench/bench_allpairs.py --n 4000 --big 0 --dim 128   # quick look
    .venv/bin/python bench/bench_allpairs.py --repeat 5 --big 0          # loaded machine: medians

With `--repeat R` the floor, fvtool and sklearn runs alternate R times (interleaved, so a loaded
shared machine slows them alike) and the table shows medians, with the range of the ratios.

Every measurement runs in its own subprocess (fresh interpreter, same seeded data), which reports
its wall time and peak RSS (`ru_maxrss`), so memory numbers are not polluted by the other runs:
- floor:   the bare block products over the upper triangle (the same blocks fvtool uses), plus
           `np.partition` of all impostor scores at the FAR targets' ranks (the "threshold floor";
           collecting the scores for it is not timed);
- fvtool:  `allpairs_scores` + every metric the verify stage reports from it (bob EER, FRR at the
           four FAR targets, ROCCH EER, interpolated EER, AUC);
- sklearn: the same products collected into one array of all scores + labels, `roc_curve` over
           them, operating points and EER read off its output (the usual way);
- big:     fvtool on N = 100,000 (5e9 pairs).
The fvtool and sklearn operating points are compared (they must be identical).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fvtool.settings import shared_data_root  # noqa: E402

FARS = [1e-2, 1e-3, 1e-4, 1e-5]
LFW = shared_data_root() / "lfw-deepfunneled"  # LFW's identity sizes for N <= 13,233 ($FVTOOL_DATA)


def _data(n: int, dim: int):
    from fvtool.verification.synthetic import clustered_embeddings, lfw_like_sizes

    sizes = lfw_like_sizes(n, seed=0, root=LFW if n <= 13233 else None)
    return clustered_embeddings(sizes, dim=dim, seed=0)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_floor(n: int, dim: int) -> dict:
    from fvtool.verification.allpairs import DEFAULT_BLOCK_ELEMS
    from fvtool.verification.scoring import Scoring, prepare

    x, lab = _data(n, dim)
    x = prepare(x, Scoring())
    t0 = time.perf_counter()
    r0 = 0
    while r0 < n - 1:
        r1 = min(n - 1, r0 + max(16, DEFAULT_BLOCK_ELEMS // (n - r0)))
        x[r0:r1] @ x[r0:].T
        r0 = r1
    t_gemm = time.perf_counter() - t0
    # the impostor scores, collected untimed, for the threshold floor
    imp = []
    r0 = 0
    while r0 < n - 1:
        r1 = min(n - 1, r0 + max(16, DEFAULT_BLOCK_ELEMS // (n - r0)))
        s = x[r0:r1] @ x[r0:].T
        rows = np.arange(r0, r1)[:, None]
        cols = np.arange(r0, n)[None, :]
        m = (cols > rows) & (lab[r0:r1][:, None] != lab[r0:][None, :])
        imp.append(s[m])
        r0 = r1
    imp = np.concatenate(imp)
    ks = [len(imp) - 1 - int(f * len(imp)) for f in FARS]
    t0 = time.perf_counter()
    np.partition(imp, ks)
    t_part = time.perf_counter() - t0
    return {"seconds": t_gemm + t_part, "gemm_s": t_gemm, "partition_s": t_part, "peak_mb": _peak_mb()}


def run_fvtool(n: int, dim: int) -> dict:
    from fvtool.verification.allpairs import allpairs_scores
    from fvtool.verification.scoring import Scoring

    x, lab = _data(n, dim)
    t0 = time.perf_counter()
    r = allpairs_scores(x, lab, [np.arange(n)], Scoring(), FARS)
    t = r.table()
    e = t.eer()
    ops = [t.frr_at_far(f) for f in FARS]
    extra = {"eer_rocch": t.eer_rocch(), "eer_interp": t.eer_interp()[0], "auc": t.auc()}
    secs = time.perf_counter() - t0
    return {"seconds": secs, "peak_mb": _peak_mb(), "passes": r.passes, "kept": len(r.kept),
            "pairs": r.n_imp + r.n_gen, "stream": r.seconds, "eer": e.value,
            "exact": all(r.far_exact(t, o.threshold, o.above_max) for o in ops) and r.around_exact(t, e.threshold),
            "ops": [[o.far, o.frr, o.threshold] for o in ops], **extra}


def run_sklearn(n: int, dim: int) -> dict:
    from sklearn.metrics import roc_curve

    from fvtool.verification.allpairs import DEFAULT_BLOCK_ELEMS
    from fvtool.verification.scoring import Scoring, prepare

    x, lab = _data(n, dim)
    t0 = time.perf_counter()
    x = prepare(x, Scoring())
    m_pairs = n * (n - 1) // 2
    scores = np.empty(m_pairs, np.float32)
    same = np.empty(m_pairs, bool)
    k = 0
    r0 = 0
    while r0 < n - 1:
        r1 = min(n - 1, r0 + max(16, DEFAULT_BLOCK_ELEMS // (n - r0)))
        s = x[r0:r1] @ x[r0:].T
        for i in range(r0, r1):  # the upper triangle row by row
            row = s[i - r0, i - r0 + 1:]
            scores[k:k + len(row)] = row
            same[k:k + len(row)] = lab[i + 1:] == lab[i]
            k += len(row)
        r0 = r1
    t1 = time.perf_counter()
    fpr, tpr, thr = roc_curve(same, scores, drop_intermediate=False)  # keep every attained point
    t2 = time.perf_counter()
    ops = []
    for f in FARS:
        j = int(np.searchsorted(fpr, f, side="right")) - 1  # largest attained FPR <= f ...
        j = int(np.searchsorted(fpr, fpr[j], side="left"))  # ... at the impostor score itself (bob)
        ops.append([float(fpr[j]), float(1 - tpr[j]), float(thr[j])])
    g = (1 - tpr) - fpr
    j = int(np.argmax(g <= 0))
    eer = float(fpr[j - 1] + (-g[j - 1]) / (g[j] - g[j - 1]) * (fpr[j] - fpr[j - 1]))
    return {"seconds": time.perf_counter() - t0, "roc_curve_s": t2 - t1, "peak_mb": _peak_mb(), "ops": ops,
            "eer_interp": eer}


def _sub(mode: str, n: int, dim: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--n", str(n), "--dim", str(dim)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=13233)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--big", type=int, default=100_000, help="N of the large run (0: skip)")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repetitions (medians reported)")
    ap.add_argument("--child", choices=["floor", "fvtool", "sklearn"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        fn = {"floor": run_floor, "fvtool": run_fvtool, "sklearn": run_sklearn}[a.child]
        print(json.dumps(fn(a.n, a.dim)))
        return

    print(f"machine: {platform.machine()}, {platform.processor() or '?'}; python {platform.python_version()}; "
          f"numpy {np.__version__}")
    runs: dict[str, list[dict]] = {"floor": [], "fvtool": [], "sklearn": []}
    for _ in range(a.repeat):
        runs["floor"].append(_sub("floor", a.n, a.dim, 3600))
        runs["fvtool"].append(_sub("fvtool", a.n, a.dim, 3600))
        if not a.skip_sklearn:
            runs["sklearn"].append(_sub("sklearn", a.n, a.dim, 7200))

    def median_run(rs: list[dict]) -> dict:
        return sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2] if rs else None

    floor, fv, sk = (median_run(runs[k]) for k in ("floor", "fvtool", "sklearn"))
    ratios = [f["seconds"] / g["seconds"] for f, g in zip(runs["fvtool"], runs["floor"], strict=True)]
    if a.repeat > 1:
        print(f"fvtool / floor per repetition: {', '.join(f'{r:.2f}' for r in ratios)}")
        if runs["sklearn"]:
            print("sklearn / fvtool per repetition: " + ", ".join(
                f"{k['seconds'] / f['seconds']:.1f}" for k, f in zip(runs["sklearn"], runs["fvtool"], strict=True)))
    rows = [
        ("floor: block GEMM + np.partition", floor["seconds"], floor["peak_mb"],
         f"GEMM {floor['gemm_s']:.2f} s + partition {floor['partition_s']:.2f} s"),
        ("fvtool streaming, all metrics", fv["seconds"], fv["peak_mb"],
         f"{statistics.median(ratios):.2f}x floor (median ratio); passes {fv['passes']}, kept {fv['kept']:,} scores"),
    ]
    if sk:
        same = all(o1[0] == o2[0] and abs(o1[1] - o2[1]) < 1e-12 and np.float32(o1[2]) == np.float32(o2[2])
                   for o1, o2 in zip(fv["ops"], sk["ops"], strict=True))
        rows.append(("sklearn roc_curve over all scores", sk["seconds"], sk["peak_mb"],
                     f"roc_curve alone {sk['roc_curve_s']:.2f} s; fvtool {sk['seconds'] / fv['seconds']:.1f}x faster "
                     f"at {100 * fv['peak_mb'] / sk['peak_mb']:.0f}% of its peak memory; "
                     f"operating points identical: {same}"))
    big = None
    if a.big:
        big = _sub("fvtool", a.big, a.dim, 7200)
        rows.append((f"fvtool N = {a.big:,} ({big['pairs']:,} pairs)", big["seconds"], big["peak_mb"],
                     f"passes {big['passes']}, kept {big['kept']:,}, exact {big['exact']}"))
    print(f"\nN = {a.n:,} x {a.dim} clustered embeddings ({fv['pairs']:,} pairs), FAR targets {FARS}\n")
    print("| run | wall s | peak RSS MB | notes |")
    print("|---|---:|---:|---|")
    for name, s, mb, note in rows:
        print(f"| {name} | {s:.2f} | {mb:.0f} | {note} |")
    print(f"\nfvtool EER {fv['eer']:.4%}, FRR@FAR {[f'{o[1]:.4f}' for o in fv['ops']]}, exact {fv['exact']}")
    if big:
        print(f"N = {a.big:,}: EER {big['eer']:.4%}, FRR@FAR {[f'{o[1]:.4f}' for o in big['ops']]}, "
              f"stream {big['stream']}")


if __name__ == "__main__":
    main()
