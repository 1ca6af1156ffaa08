"""Named evaluation settings (`--protocol lfw|meds|ms1m`) and the one resolver every stage uses.

Why presets: a researcher asks "which setup is best at my operating point"; the preset fixes the
comparison set and the operating points the study reports, so `fvtool verify emb.h5 --protocol
meds` means the same thing in every run. `far_targets[0]` is the preset's primary operating point
(e.g. FRR at FAR = 1e-5 for MEDS-II style all-pairs evaluation).

`resolve_protocol(spec, keys=..., identities=...)` accepts a preset name or a path to a protocol
JSON (`fvtool-protocol`) or an LFW-format pairs text file (detected by content, not by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fvtool.errors import InputError
from fvtool.protocols.allpairs import allpairs_protocol
from fvtool.protocols.lfw import read_lfw_pairs, read_packaged
from fvtool.protocols.model import FORMAT, Protocol, read_protocol


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    kind: str  # "pairs" | "allpairs"
    far_targets: tuple[float, ...]  # first = primary operating point
    kfold: bool  # report k-fold accuracy (LFW style) in addition to threshold-free metrics


PRESETS: dict[str, Preset] = {
    "lfw": Preset(
        name="lfw",
        description="LFW View 2: official pairs.txt, 10 identity-disjoint folds x (300 same + 300 different); "
        "10-fold accuracy (threshold chosen on the other 9 folds) and EER",
        kind="pairs",
        far_targets=(1e-3, 1e-2),
        kfold=True,
    ),
    "meds": Preset(
        name="meds",
        description="MEDS-II style: every unordered pair of the given images; primary metric FRR at FAR = 1e-5",
        kind="allpairs",
        far_targets=(1e-5, 1e-4, 1e-3),
        kfold=False,
    ),
    "ms1m": Preset(
        name="ms1m",
        description="MS-Celeb test-subset style: every unordered pair of the given images; primary metric "
        "FRR at FAR = 1e-4",
        kind="allpairs",
        far_targets=(1e-4, 1e-3, 1e-5),
        kfold=False,
    ),
}


def _looks_like_json(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return head.startswith(b"{")


def read_any_protocol(path: str | Path, *, allow_unhashed: bool = False) -> Protocol:
    """A protocol JSON, an LFW-format pairs text file or a labelled `image_a image_b label` list, by content
    (`allow_unhashed`: see `read_protocol`; the text formats have no hash of their own and are checked line by
    line instead)."""
    from fvtool.protocols.pair_list import looks_like_pair_list, pair_list_protocol, read_pair_list

    path = Path(path)
    if not path.is_file():
        raise InputError(f"protocol file {path} is a folder" if path.is_dir() else
                         f"protocol file {path} does not exist")
    if _looks_like_json(path):
        return read_protocol(path, allow_unhashed=allow_unhashed)
    if looks_like_pair_list(path):
        return pair_list_protocol(read_pair_list(path))
    return read_lfw_pairs(path)


def resolve_protocol(spec: str, *, keys: list[str], identities: list[str],
                     allow_unhashed: bool = False) -> tuple[Protocol, Preset | None]:
    """The protocol meant by `spec`, and its preset (None for a file).

    - "lfw": the packaged official View 2 pairs.txt (md5-checked); `keys` are not consulted here,
      callers map images with `protocol.resolve_indices(keys)`, which reports missing images.
    - "meds", "ms1m": one all-pairs trial over all of `keys` (with their `identities`).
    - otherwise a path to an `fvtool-protocol` JSON or an LFW pairs text file.
    """
    preset = PRESETS.get(spec.lower()) if isinstance(spec, str) else None
    if preset is not None:
        if preset.kind == "pairs":
            return read_packaged("pairs.txt"), preset
        proto = allpairs_protocol(keys, identities, name=preset.name, source=f"preset:{preset.name}",
                                  extra={"preset": preset.name})
        return proto, preset
    path = Path(spec)
    if not path.exists():
        raise InputError(
            f"--protocol {spec!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file "
            f"(an {FORMAT} JSON written by `fvtool pairs`, or an LFW pairs.txt)"
        )
    return read_any_protocol(path, allow_unhashed=allow_unhashed), None
