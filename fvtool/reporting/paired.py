"""Numbers the report derives from stored scores with verify's own code: operating points a verify
output lacks, confidence intervals, and paired comparisons (identity bootstrap).

Why here and not only in `verify --compare`: a report compares many runs against one baseline
after the fact; every verify output already holds its scored comparisons (scores.npz) with
the identities, so the report runs the very same `fvtool.verification.bootstrap` code on them
(same rules, same seed gives the same numbers as `verify --compare`), for every run at once.

It needs the full comparison set of both runs. For all-pairs protocols scores.npz keeps only
the top impostors, so the report uses the verify output's own `comparison` block when it was
computed against the baseline's embeddings (`verify --compare`), and says "n/a" otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fvtool.reporting.records import RunData, ScoreSet
from fvtool.verification.bootstrap import Comparisons, bootstrap_ci, paired_comparison
from fvtool.verification.metrics import ScoreTable

#: above this many comparisons the report does not bootstrap (1000 replicates of 1.25M all-pairs
#: comparisons take minutes); `fvtool verify --bootstrap N` computes those intervals while scoring
MAX_COMPARISONS = 200_000


def n_comparisons(s: ScoreSet) -> int:
    return len(s.genuine) + len(s.impostor)


@dataclass
class Difference:
    """run - baseline for one metric, with the paired percentile interval."""

    metric: str  # "eer" or "frr_at_far"
    far_target: float | None
    run_value: float | None
    baseline_value: float | None
    diff: float | None
    lo: float | None
    hi: float | None
    significant: bool
    measurable: bool = True


@dataclass
class PairedResult:
    label: str
    baseline: str
    replicates: int | None
    seed: int | None
    source: str  # "report" (recomputed from scores.npz) or "verify --compare"
    differences: list[Difference]
    note: str = ""


def identity_codes(score_sets: Sequence[ScoreSet]) -> dict[str, int]:
    """Identity name -> code, sorted by name, over the identities the comparisons involve.

    Sorting by name matches verify's coding (`np.unique` of the protocol identities) whenever every
    protocol identity takes part in some comparison (true for LFW and generated protocols)."""
    names: set[str] = set()
    for s in score_sets:
        idx = np.unique(np.concatenate([s.gen_a, s.gen_b, s.imp_a, s.imp_b]))
        names.update(s.identities[idx].tolist())
    return {n: i for i, n in enumerate(sorted(names))}


def comparisons(s: ScoreSet, codes: dict[str, int]) -> Comparisons | None:
    """verify's `Comparisons` for a complete score set; None when impostors were only partly kept."""
    if not s.impostor_complete:
        return None
    per_key = np.array([codes.get(n, -1) for n in s.identities.tolist()], dtype=np.int64)
    return Comparisons(genuine=s.genuine, gen_id=per_key[s.gen_a], impostor=s.impostor, imp_ia=per_key[s.imp_a],
                       imp_ib=per_key[s.imp_b], n_ids=len(codes))


def fill_operating_points(r: RunData, fars: Sequence[float]) -> list[float]:
    """Compute FRR@FAR targets the verify output lacks from its stored scores (verify's own rule,
    `ScoreTable.frr_at_far`), when every comparison is stored; returns the targets added."""
    missing = [f for f in fars if r.point(f) is None]
    if not missing or r.scores is None or not r.scores.impostor_complete:
        return []
    table = ScoreTable.from_scores(r.scores.impostor, r.scores.genuine)
    for f in missing:
        r.points.append(table.frr_at_far(f))
    return missing


def fill_bootstrap_cis(r: RunData, fars: Sequence[float], replicates: int, seed: int,
                       tick: Callable[[], None] | None = None) -> bool:
    """Give `r` identity-bootstrap CIs (EER, FRR@FAR) when its verify output has none; True if done."""
    if r.scores is None or replicates <= 0 or n_comparisons(r.scores) > MAX_COMPARISONS:
        return False
    comps = comparisons(r.scores, identity_codes([r.scores]))
    if comps is None:
        return False
    res = bootstrap_ci(comps, fars, replicates=replicates, seed=seed, tick=tick)
    if res["eer"]["lo"] is not None and r.eer_ci is None:
        r.eer_ci = (res["eer"]["lo"], res["eer"]["hi"])
    for e in res["frr_at_far"]:
        p = r.point(e["far_target"])
        if p is not None and p.ci is None and p.measurable and e["lo"] is not None:
            p.ci = (e["lo"], e["hi"])
    return True


def _measurable(r: RunData, f: float) -> bool:
    p = r.point(f)
    if p is not None:
        return p.measurable
    return bool(r.n_impostor) and f >= 1.0 / r.n_impostor


def _from_result(res: dict, run: RunData, base: RunData, fars: Sequence[float]) -> list[Difference]:
    out = [Difference("eer", None, res["eer"]["a"], res["eer"]["b"], res["eer"]["diff"], res["eer"]["lo"],
                      res["eer"]["hi"], bool(res["eer"]["significant"]))]
    by_far = {e["far_target"]: e for e in res["frr_at_far"]}
    for f in fars:
        e = by_far.get(f)
        if e is None:
            continue
        ok = _measurable(run, f) and _measurable(base, f)
        out.append(Difference("frr_at_far", f, e["a"], e["b"], e["diff"] if ok else None, e["lo"] if ok else None,
                              e["hi"] if ok else None, bool(e["significant"]) and ok, measurable=ok))
    return out


def compare_to_baseline(run: RunData, base: RunData, fars: Sequence[float], replicates: int, seed: int,
                        tick: Callable[[], None] | None = None) -> PairedResult:
    """run - baseline: recomputed from both score sets when complete, else verify's own comparison."""
    if run.protocol_sha256 != base.protocol_sha256 or run.protocol_sha256 is None:
        return PairedResult(run.label, base.label, None, None, "", [],
                            f"not paired: protocol {run.protocol} differs from the baseline's {base.protocol}")
    too_big = any(s is not None and n_comparisons(s) > MAX_COMPARISONS for s in (run.scores, base.scores))
    if run.scores is not None and base.scores is not None and not too_big:
        codes = identity_codes([run.scores, base.scores])
        a, b = comparisons(run.scores, codes), comparisons(base.scores, codes)
        if a is not None and b is not None:
            res = paired_comparison(a, b, fars, replicates=replicates, seed=seed, tick=tick)
            return PairedResult(run.label, base.label, replicates, seed, "report", _from_result(res, run, base, fars))
    cmp = run.metrics_raw.get("comparison") or {}
    other = (cmp.get("other") or {}).get("sha256")
    if other and other == base.embeddings_sha256:
        targets = [f for f in fars if any(e["far_target"] == f for e in cmp.get("frr_at_far", []))]
        return PairedResult(run.label, base.label, cmp.get("replicates"), cmp.get("seed"), "verify --compare",
                            _from_result(cmp, run, base, targets))
    why = (f"more than {MAX_COMPARISONS:,} comparisons" if too_big
           else "the scores keep only the top impostors (all-pairs)")
    return PairedResult(run.label, base.label, None, None, "", [],
                        f"n/a: {why}; run "
                        f"`fvtool verify <run embeddings> --compare <baseline embeddings>` to pair {run.label} "
                        f"with {base.label}")
