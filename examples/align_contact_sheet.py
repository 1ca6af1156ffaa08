"""Contact sheet of random aligned crops from one or more `fvtool align` outputs of the same source.

Each panel shows the same randomly chosen source images (seeded) in one aligned folder, so the
modes can be compared face by face. On `similarity` panels a thin line marks the template's eye
height and short ticks its eye columns: in a correct alignment every pair of eyes sits on the line.
Only rows with status `ok` are drawn (fallbacks are listed in the caption count).

    .venv/bin/python examples/align_contact_sheet.py /tmp/fv-aligned/lfw-sim /tmp/fv-aligned/lfw-crop \\
        -o docs/img/align_contact_sheet.png --n 24 --seed 0
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from fvtool.align.geometry import template
from fvtool.atomic import atomic_path
from fvtool.data.images import load_rgb
from fvtool.data.manifest import MANIFEST_NAME, read_manifest
from fvtool.data.scan import safe_join

CELL = 112
PAD = 4
TITLE = 22


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("aligned", type=Path, nargs="+", help="fvtool align output folders of the same source")
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--n", type=int, default=24, help="crops per panel")
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    manifests = [{r.src: r for r in read_manifest(d / MANIFEST_NAME)} for d in args.aligned]
    common = sorted(set.intersection(*(set(k for k, r in m.items() if r.status == "ok") for m in manifests)))
    if len(common) < args.n:
        raise SystemExit(f"only {len(common)} images are ok in every folder")
    chosen = random.Random(args.seed).sample(common, args.n)
    rows = (args.n + args.cols - 1) // args.cols
    panel_h = TITLE + rows * (CELL + PAD)
    sheet = Image.new("RGB", (args.cols * (CELL + PAD) + PAD, len(args.aligned) * panel_h + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for p, (folder, m) in enumerate(zip(args.aligned, manifests, strict=True)):
        cfg = json.loads((folder / "align.json").read_text())
        opts = cfg["options"]
        counts = cfg.get("summary", {}).get("counts", {})
        y0 = p * panel_h + PAD
        draw.text((PAD, y0 + 4), f"{folder.name}: mode {opts['mode']}, {opts['size']}px"
                  + (f", margin {opts['margin']:g}" if opts["mode"] == "crop" else ", eye line = template")
                  + f"  (ok {counts.get('ok', '?')}, fallback {counts.get('fallback', '?')})", fill="black")
        for i, src in enumerate(chosen):
            crop = load_rgb(safe_join(folder, m[src].key)).resize((CELL, CELL), Image.Resampling.BILINEAR)
            x, y = PAD + (i % args.cols) * (CELL + PAD), y0 + TITLE + (i // args.cols) * (CELL + PAD)
            sheet.paste(crop, (x, y))
            if opts["mode"] == "similarity":
                t = template(CELL)
                ey = y + (t[0, 1] + t[1, 1]) / 2
                draw.line([(x, ey), (x + CELL - 1, ey)], fill=(255, 40, 40), width=1)
                for ex in (t[0, 0], t[1, 0]):
                    draw.line([(x + ex, ey - 5), (x + ex, ey + 5)], fill=(255, 40, 40), width=1)
    with atomic_path(args.output) as tmp:
        sheet.save(tmp, format="PNG")
    print(f"wrote {args.output} ({len(chosen)} images x {len(args.aligned)} panels, seed {args.seed})")


if __name__ == "__main__":
    main()
