"""Measured CPU cost per training image of every shipped recipe, and the projected time of its full run.

For each shipped recipe (fvtool/recipes/*.toml) the bench builds what `fvtool train --recipe NAME`
trains: the recipe is resolved by the train stage's own `config_from_recipe` (recipe < overrides) and
trained by fvtool's engine (`Trainer.fit`: sampler, uint8 cache, augmentation, normalisation,
forward, loss, backward, optimiser step), timed by bench/bench_train.py's `time_trainer` as process
CPU time per image (all threads; stable on a shared machine). Only the data (the embedded LFW subset,
or --data), the thread count and, above --batch, the batch size are overridden; the batch cap is
printed per row. Recipes that share network, input size, loss/method and batch are measured once.

The projection per recipe: images per epoch x the recipe's epochs, (a) at the source's own dataset
scale (SOURCE_SCALE, quoted from ../shared/sources and docs/recipes.md) and (b) on the LFW stand-in
(`--lfw-fold 10` split: 11,622 training images; P x K samplers use the 7,829 images of identities with
>= 2 images; study 1's verifiers the 72 % part of 4,000 random pairs), at 2 CPU cores fully busy
(img/s = 2 / CPU s per image). A GPU's time is not measured here.

    .venv/bin/python bench/bench_recipe_costs.py                      # all recipes, batch cap 32
    .venv/bin/python bench/bench_recipe_costs.py --only study5 --batch 16 --steps 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import time_trainer

from fvtool.recipes import load_recipe, recipe_names
from fvtool.settings import EMBEDDED_DATA
from fvtool.training.config import TrainConfig
from fvtool.training.stage import config_from_recipe

#: study -> (images per epoch at the source's own scale, what it is)
SOURCE_SCALE = {
    1: (5_760, "LFW random pairs: 72 % of 4,000 pairs x 2 images (the source's pair count is not stated)"),
    2: (494_414, "CASIA-WebFace, 494,414 images"),
    3: (3_141_890, "VGGFace2 subset of 8,631 identities (image count not stated: VGGFace2 train's 3.14 M assumed)"),
    4: (435_200, "MS-Celeb-1M subset, 6,400 identities x 68 images"),
    5: (750_000, "MS-Celeb-1M large, 750,000 images of 15,000 identities"),
}
STUDY1_VAE_SOURCE = (60_000, "MNIST, 60,000 training images")
STANDIN_ALL, STANDIN_PK, STANDIN_PAIRS = 11_622, 7_829, 5_760


@dataclass
class Cost:
    names: list[str]
    cfg: TrainConfig
    batch: int  # the measured batch (the recipe's, or --batch when smaller)
    cpu_s_per_image: float
    sampler: str


def recipe_config(name: str, *, data: str, batch_cap: int | None, threads: int, size: int | None = None,
                  epochs: int | None = None) -> TrainConfig:
    """What `fvtool train --recipe NAME` trains, on `data`, with the batch capped at `batch_cap`."""
    base = config_from_recipe(name, {})
    over = {"data": data, "threads": threads, "val_protocol": "none", "checkpoint_every": 10_000, "log": "none",
            "epochs": epochs if epochs is not None else 1000, "input_size": size, "train_pairs": None}
    if batch_cap is not None and base.batch_size > batch_cap:
        over["batch_size"] = batch_cap
    if base.pk is not None and batch_cap is not None:  # keep P x K within the cap: fewer identities
        p, k = base.pk
        over["pk"] = (max(2, min(p, batch_cap // k)), k)
        over["batch_size"] = over["pk"][0] * k
    return config_from_recipe(name, {k: v for k, v in over.items() if v is not None})


def group_key(cfg: TrainConfig) -> tuple:
    d = cfg.to_dict()
    for k in ("recipe", "epochs", "lr", "weight_decay", "schedule", "select_metric", "name", "warmup_epochs",
              "early_stop", "seed"):
        d.pop(k, None)
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


def measure(cfg: TrainConfig, work: Path, *, steps: int, warmup: int) -> tuple[float, str]:
    """(CPU s per training image, sampler class) over `steps` engine steps after `warmup`."""
    from fvtool.training.engine import Trainer
    t = Trainer(cfg, work / "run", show_progress=False, cache_dir=work / "cache")
    _, cpu = time_trainer(t, steps, warmup)
    return cpu, type(t.sampler).__name__


def standin_images(study: int | None, sampler: str, loss: str) -> int:
    if study == 1 and loss != "vae":
        return STANDIN_PAIRS
    return STANDIN_PK if sampler == "PKSampler" else STANDIN_ALL


def source_images(study: int | None, loss: str) -> tuple[int, str]:
    if study == 1 and loss == "vae":
        return STUDY1_VAE_SOURCE
    return SOURCE_SCALE.get(study, (0, "?"))


def hours(images: float, cpu: float, cores: int) -> str:
    h = images * cpu / cores / 3600
    return f"{h:,.1f} h" if h < 48 else f"{h / 24:,.0f} d"


def run(names: list[str], *, data: str, batch_cap: int | None, threads: int, steps: int, warmup: int,
        size: int | None = None, work: Path | None = None, echo=print) -> list[Cost]:
    """Measure every distinct configuration among `names`; one Cost per group of recipes."""
    work = work or Path(tempfile.mkdtemp(prefix="bench-recipes-"))
    groups: dict[tuple, Cost] = {}
    for name in names:
        cfg = recipe_config(name, data=data, batch_cap=batch_cap, threads=threads, size=size)
        key = group_key(cfg)
        if key in groups:
            groups[key].names.append(name)
            continue
        t0 = time.perf_counter()
        cpu, sampler = measure(cfg, work / name, steps=steps, warmup=warmup)
        groups[key] = Cost([name], cfg, cfg.batch_size, cpu, sampler)
        echo(f"{name}: {cfg.backbone} @{cfg.input_size} {cfg.loss} batch {cfg.batch_size}: "
             f"{1000 * cpu:.1f} CPU ms/image ({time.perf_counter() - t0:.0f} s)", flush=True)
        shutil.rmtree(work / name, ignore_errors=True)
    return list(groups.values())


def table(costs: list[Cost], cores: int) -> str:
    rows = ["| recipe(s) | network @ input, loss | batch measured (recipe's) | CPU ms / image | img/s at "
            f"{cores} cores | epochs | source scale: images/epoch -> time | LFW stand-in: images/epoch -> time "
            "| GPU |", "|---|---|---|---|---|---|---|---|---|"]
    for c in costs:
        for name in c.names:
            r = load_recipe(name)
            full = config_from_recipe(name, {})
            src, _ = source_images(r.study, full.loss)
            lfw = standin_images(r.study, c.sampler, full.loss)
            opts = ", ".join(f"{k}={v}" for k, v in (full.backbone_options or {}).items())
            arch = "conv VAE" if full.loss == "vae" else full.backbone
            net = f"{arch}{f' ({opts})' if opts else ''} @{full.input_size}, {full.loss}"
            if full.method:
                net += f" ({full.method})"
            rows.append(f"| {name} | {net} | {c.batch} ({full.batch_size}) | {1000 * c.cpu_s_per_image:.1f} | "
                        f"{cores / c.cpu_s_per_image:.1f} | {full.epochs} | {src:,} -> "
                        f"{hours(src * full.epochs, c.cpu_s_per_image, cores)} | {lfw:,} -> "
                        f"{hours(lfw * full.epochs, c.cpu_s_per_image, cores)} | not measured |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Images per epoch at the sources' scale: " + "; ".join(
                                     f"study {s}: {d}" for s, (_, d) in SOURCE_SCALE.items())
                                 + f"; study 1 VAEs: {STUDY1_VAE_SOURCE[1]}.")
    ap.add_argument("--data", default=str(EMBEDDED_DATA), help="training images for the measurement (default: "
                    "the embedded LFW subset)")
    ap.add_argument("--only", default="", help="comma-separated substrings: measure only recipes matching one")
    ap.add_argument("--batch", type=int, default=32, help="cap on the measured batch (0: the recipes' own; "
                    "CPU time per image barely depends on it at these sizes, but wall time does)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=min(2, torch.get_num_threads()))
    ap.add_argument("--cores", type=int, default=2, help="cores fully busy in the projection")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    names = [n for n in recipe_names() if not a.only or any(s in n for s in a.only.split(","))]
    t0 = time.perf_counter()
    costs = run(names, data=a.data, batch_cap=a.batch or None, threads=a.threads, steps=a.steps, warmup=a.warmup)
    print()
    print(f"machine: {platform.machine()}, {platform.processor() or '?'}, {a.threads} torch threads, torch "
          f"{torch.__version__}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"{time.perf_counter() - t0:.0f} s; {a.steps} steps after {a.warmup} warm-up per configuration")
    print()
    print(table(costs, a.cores))


if __name__ == "__main__":
    main()
