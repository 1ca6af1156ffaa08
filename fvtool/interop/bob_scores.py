"""bob.bio score files, so bob's tools and fvtool share results.

Formats (whitespace separated, one comparison per line, as `bob.bio.base` writes them):
  4 columns: `claimed_id real_id test_label score`
  5 columns: `claimed_id model_label real_id test_label score`
A comparison is genuine when `claimed_id == real_id`. fvtool writes the enrolled image's
identity as `claimed_id`, its key as `model_label`, the probe's identity as `real_id` and the
probe's key as `test_label`. Keys and identities must not contain whitespace (bob's own rule);
the writer refuses them rather than writing a file bob would misread.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fvtool.atomic import write_text
from fvtool.errors import InputError


@dataclass
class ScoreRows:
    claimed_id: list[str]
    model_label: list[str]  # "" in 4-column files
    real_id: list[str]
    test_label: list[str]
    score: np.ndarray  # float64

    @property
    def genuine_mask(self) -> np.ndarray:
        return np.array([c == r for c, r in zip(self.claimed_id, self.real_id, strict=True)], dtype=bool)

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(impostor scores, genuine scores), the argument order of bob.measure."""
        g = self.genuine_mask
        return self.score[~g], self.score[g]


def format_scores(rows: ScoreRows, columns: int = 5) -> str:
    if columns not in (4, 5):
        raise InputError(f"bob score files have 4 or 5 columns, not {columns}")
    fields = [rows.claimed_id, rows.real_id, rows.test_label] + ([rows.model_label] if columns == 5 else [])
    for col in fields:
        bad = next((v for v in col if not v or any(ch.isspace() for ch in v)), None)
        if bad is not None:
            raise InputError(f"cannot write bob scores: label {bad!r} is empty or contains whitespace")
    out = io.StringIO()
    for i, value in enumerate(rows.score.tolist()):  # Python floats: repr is the shortest exact form
        s = repr(float(value))
        if columns == 5:
            out.write(f"{rows.claimed_id[i]} {rows.model_label[i]} {rows.real_id[i]} {rows.test_label[i]} {s}\n")
        else:
            out.write(f"{rows.claimed_id[i]} {rows.real_id[i]} {rows.test_label[i]} {s}\n")
    return out.getvalue()


def write_scores(path: str | Path, rows: ScoreRows, columns: int = 5) -> None:
    write_text(path, format_scores(rows, columns))


def read_scores(path: str | Path) -> ScoreRows:
    """Read a 4- or 5-column file (auto-detected, all lines must agree); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"score file {path} does not exist")
    claimed, model, real, test, scores = [], [], [], [], []
    ncol = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if ncol is None:
                ncol = len(parts)
                if ncol not in (4, 5):
                    raise InputError(f"{path}:{lineno}: {ncol} columns; bob score files have 4 or 5")
            if len(parts) != ncol:
                raise InputError(f"{path}:{lineno}: {len(parts)} columns, earlier lines have {ncol}")
            try:
                score = float(parts[-1])
            except ValueError:
                raise InputError(f"{path}:{lineno}: score {parts[-1]!r} is not a number") from None
            if not np.isfinite(score):
                raise InputError(f"{path}:{lineno}: score {parts[-1]!r} is not finite")
            claimed.append(parts[0])
            if ncol == 5:
                model.append(parts[1])
                real.append(parts[2])
                test.append(parts[3])
            else:
                model.append("")
                real.append(parts[1])
                test.append(parts[2])
            scores.append(score)
    if not scores:
        raise InputError(f"{path}: no scores")
    return ScoreRows(claimed, model, real, test, np.asarray(scores, dtype=np.float64))


def rows_from_verify_scores(scores_npz: str | Path) -> ScoreRows:
    """All scored comparisons of a `verify` output (`scores.npz`), genuine first.

    Refuses all-pairs outputs whose impostor list was truncated to the tail the operating
    points need: a bob file must hold every comparison.
    """
    path = Path(scores_npz)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read verify scores ({e})") from None
    with z:
        if "impostor_complete" in z.files and not bool(z["impostor_complete"]):
            raise InputError(
                f"{path}: this all-pairs run kept only the impostor tail; bob score files need every comparison "
                "(export a pairs protocol instead)"
            )
        keys = [str(k) for k in z["keys"]]
        ids = [str(i) for i in z["identities"]]
        a = np.concatenate([z["genuine_a"], z["impostor_a"]])
        b = np.concatenate([z["genuine_b"], z["impostor_b"]])
        s = np.concatenate([z["genuine"], z["impostor"]]).astype(np.float64)
    return ScoreRows(
        claimed_id=[ids[i] for i in a],
        model_label=[keys[i] for i in a],
        real_id=[ids[i] for i in b],
        test_label=[keys[i] for i in b],
        score=s,
    )
