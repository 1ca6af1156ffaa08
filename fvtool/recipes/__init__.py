"""Training recipes: named TOML files (`fvtool train --recipe NAME`, `--list-recipes`) shipped here.

Why recipes as data: each example study has two ways to run it: `<study>-faithful`, the source
document's settings as far as fvtool can run them, and `<study>-tuned`, fvtool's best settings for
the same experiment. A TOML file per recipe keeps every value next to a comment quoting the source
sentence it comes from (docs/recipes.md tabulates them), and a reader can diff two recipes.

Layout of a recipe file: the top-level keys and tables are TrainConfig fields, exactly as in a
`--config` file (fvtool/training/config.py); the `[recipe]` table is metadata, not config:

    [recipe]
    study = 2                         # the example study (examples/studyN_*.sh)
    source = "001_0c0d94d023c797e2.txt"   # the source document (../shared/sources/)
    summary = "one line"
    departures = ["where fvtool differs from the source, one entry each"]

Precedence: TrainConfig defaults < recipe < explicit command-line options. The run records
`recipe = {name, sha256 (of the file's bytes), overrides (the options given on top)}` in its
config (config.json, checkpoints), so a result can be traced to the exact recipe text.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fvtool.errors import InputError

_META_KEYS = {"study", "source", "summary", "departures"}


@dataclass(frozen=True)
class Recipe:
    name: str
    study: int | None
    source: str
    summary: str
    departures: tuple[str, ...]
    config: dict[str, Any]  # TrainConfig keys
    sha256: str  # of the file's bytes: the exact recipe text a run used
    path: str


def _shipped() -> dict[str, Any]:
    """name -> resource of every recipe shipped with fvtool."""
    return {p.name[: -len(".toml")]: p for p in resources.files(__name__).iterdir() if p.name.endswith(".toml")}


def recipe_names() -> list[str]:
    return sorted(_shipped())


def _parse(name: str, data: bytes, where: str) -> Recipe:
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"{where}: not valid TOML ({e})") from None
    meta = doc.pop("recipe", None)
    if not isinstance(meta, dict):
        raise InputError(f"{where}: a recipe needs a [recipe] table (study, source, summary, departures)")
    unknown = sorted(set(meta) - _META_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown [recipe] key(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(sorted(_META_KEYS))}")
    departures = meta.get("departures", [])
    if not isinstance(departures, list) or not all(isinstance(d, str) for d in departures):
        raise InputError(f"{where}: [recipe] departures must be a list of strings")
    study = meta.get("study")
    if study is not None and (isinstance(study, bool) or not isinstance(study, int)):
        raise InputError(f"{where}: [recipe] study must be an integer")
    return Recipe(name, study, str(meta.get("source", "")), str(meta.get("summary", "")), tuple(departures),
                  doc, hashlib.sha256(data).hexdigest(), where)


def load_recipe(name: str) -> Recipe:
    """A shipped recipe by name, or a recipe file by path (`.toml`); unknown names list the known ones."""
    shipped = _shipped()
    if name in shipped:
        return _parse(name, shipped[name].read_bytes(), f"recipe {name}")
    path = Path(name)
    if path.suffix == ".toml" and path.is_file():
        return _parse(path.stem, path.read_bytes(), str(path))
    raise InputError(f"unknown recipe {name!r}; shipped recipes: {', '.join(sorted(shipped))} "
                     "(or give a recipe file NAME.toml); `fvtool train --list-recipes` describes them")


def recipes() -> list[Recipe]:
    return [load_recipe(n) for n in recipe_names()]


def _value(v: Any) -> str:
    return str(v)


def recipe_markdown(r: Recipe) -> str:
    """One recipe as docs/recipes.md's "Recipe by recipe" entry: summary, fields, departures."""
    top = [f"`{k} = {_value(v)}`" for k, v in r.config.items() if not isinstance(v, dict)]
    tables = [f"`[{k}]` " + ", ".join(f"`{kk} = {_value(vv)}`" for kk, vv in v.items())
              for k, v in r.config.items() if isinstance(v, dict)]
    lines = [f"### `{r.name}` (study {r.study}, source `{r.source}`)", "", f"{r.summary}.", "",
             "Fields: " + "; ".join([", ".join(top), *tables]) + ".", ""]
    if r.departures:
        lines += ["Departures from the source:", "", *[f"- {d}" for d in r.departures], ""]
    return "\n".join(lines)


#: the generated section of docs/recipes.md (`python scripts/recipes_doc.py` rewrites it)
DOC_SECTION = "## Recipe by recipe"
DOC_INTRO = ("Generated from the files by `python scripts/recipes_doc.py` (`fvtool train --list-recipes` shows "
             "the same departures; `tests/test_recipes.py` fails when this section is stale).")


def recipes_section() -> str:
    """docs/recipes.md's "Recipe by recipe" section, from the shipped recipe files."""
    return "\n".join([DOC_SECTION, "", DOC_INTRO, "", *[recipe_markdown(r) for r in recipes()]])


def replace_section(doc: str) -> str:
    """`doc` (docs/recipes.md's text) with its "Recipe by recipe" section regenerated; the next `## ` ends it."""
    start = doc.index(DOC_SECTION + "\n")
    end = doc.find("\n## ", start + len(DOC_SECTION))
    return doc[:start] + recipes_section() + (doc[end:] if end >= 0 else "\n")

