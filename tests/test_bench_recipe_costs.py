"""bench/bench_recipe_costs.py's core on one tiny recipe configuration, so the script cannot rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from fvtool.settings import EMBEDDED_DATA

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_recipe_costs.py"


def _bench():
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_recipe_costs", BENCH)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_recipe_costs"] = mod  # dataclasses look their module up
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH.parent))


def test_recipe_costs_tiny(tmp_path):
    b = _bench()
    torch.set_num_threads(1)
    names = ["study1-triplet-faithful", "study1-triplet-faithful"]  # the same configuration: measured once
    costs = b.run(names, data=str(EMBEDDED_DATA), batch_cap=6, threads=1, steps=1, warmup=1, size=32,
                  work=tmp_path, echo=lambda *a, **k: None)
    assert [c.names for c in costs] == [names]
    (c,) = costs
    assert c.cpu_s_per_image > 0 and c.batch == 6 and c.cfg.input_size == 32 and c.cfg.backbone == "siamese_cnn"
    assert c.cfg.recipe["name"] == "study1-triplet-faithful"
    t = b.table(costs, cores=2)
    assert t.count("\n") == 1 + 2 and "5,760" in t and "not measured" in t and "| 6 (96) |" in t
