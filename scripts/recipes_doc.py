"""Regenerate docs/recipes.md's "Recipe by recipe" section from the shipped recipe files.

Why a script: the section lists every recipe's fields and departures; written by hand it drifts from
the TOML files. tests/test_recipes.py fails when the doc and the files disagree.
Usage: python scripts/recipes_doc.py [docs/recipes.md]
"""

from __future__ import annotations

import sys
from pathlib import Path

from fvtool.recipes import replace_section


def main(path: Path) -> int:
    text = path.read_text(encoding="utf-8")
    new = replace_section(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"updated {path}")
    else:
        print(f"{path} is current")
    return 0


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else root / "docs" / "recipes.md"))
