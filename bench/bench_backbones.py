"""Forward and training throughput of every registered backbone on this machine (channels_last, float32).

Per backbone and input size, with a batch of random images (throughput does not depend on pixels):
  forward   eval mode, torch.inference_mode, channels_last (what `embed` does)
  train     train mode, channels_last, softmax loss over 158 classes, SGD momentum step (a bare step:
            no data pipeline; bench_train.py measures the pipeline against this)
Reported: wall-clock img/s (noisy on a shared machine) and process CPU milliseconds per image (all
threads; steadier under load), plus forward GFLOPs per image (torch's FLOP counter, machine-independent).
Each measurement runs warm-up steps, then at least --min-time seconds and --min-steps steps.

    .venv/bin/python bench/bench_backbones.py                            # all backbones at 64 and 112
    .venv/bin/python bench/bench_backbones.py --backbones resnet_small resnet18:stem=imagenet --sizes 64
    .venv/bin/python bench/bench_backbones.py --threads 1 --out bench/out/backbones.md
"""

from __future__ import annotations

import argparse
import ast
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fvtool.errors import InputError
from fvtool.losses.registry import build_loss
from fvtool.models.registry import backbone_specs, build_backbone


def parse_entry(entry: str) -> tuple[str, dict[str, object]]:
    """'name' or 'name:key=value,key=value' (values as Python literals, else strings)."""
    name, _, rest = entry.partition(":")
    opts: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        try:
            opts[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            opts[k] = v
    return name, opts


def timed(step: Callable[[], None], warmup: int, min_steps: int, min_time: float) -> tuple[float, float, int]:
    """(wall seconds per step, CPU seconds per step, steps) after `warmup` untimed steps."""
    for _ in range(warmup):
        step()
    n, w0, c0 = 0, time.perf_counter(), time.process_time()
    while n < min_steps or time.perf_counter() - w0 < min_time:
        step()
        n += 1
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n, n


def forward_gflops(model: torch.nn.Module, size: int) -> float:
    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size).to(memory_format=torch.channels_last))
    return counter.get_total_flops() / 1e9


def bench_one(name: str, opts: dict[str, object], size: int, args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(0)
    model = build_backbone(name, input_size=size, **opts).to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    gflops = forward_gflops(model, size)
    x = torch.randn(args.batch, 3, size, size).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 158, (args.batch,))

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    model.eval()
    fw, fc, fn = timed(forward, args.warmup, args.min_steps, args.min_time)

    loss = build_loss("softmax", embedding_size=512, num_classes=158)
    opt = torch.optim.SGD([*model.parameters(), *loss.parameters()], lr=0.01, momentum=0.9)

    def train() -> None:
        out = loss(model(x), labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    model.train()
    tw, tc, tn = timed(train, args.warmup, args.min_steps, args.min_time)
    b = args.batch
    return {"backbone": name + ("" if not opts else ":" + ",".join(f"{k}={v}" for k, v in opts.items())),
            "size": size, "params_m": params / 1e6, "gflops": gflops,
            "fwd_ips": b / fw, "train_ips": b / tw, "fwd_cpu_ms": 1e3 * fc / b, "train_cpu_ms": 1e3 * tc / b,
            "steps": f"{fn}/{tn}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="*", help="entries 'name' or 'name:k=v,...' (default: all registered)")
    ap.add_argument("--sizes", nargs="*", type=int, default=[64, 112], help="input sizes (skipped below a minimum)")
    ap.add_argument("--batch", type=int, default=64, help="images per step")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--min-steps", type=int, default=3, help="timed steps at least")
    ap.add_argument("--min-time", type=float, default=4.0, help="timed seconds at least")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = backbone_specs()
    entries = [parse_entry(e) for e in (args.backbones or [n for n in specs if n != "iresnet100"])]
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    head = (f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"batch {args.batch}, load average at start {' '.join(load)}")
    lines = [head, "",
             "| backbone | input | params (M) | fwd GFLOPs/img | forward img/s | train img/s "
             "| fwd CPU ms/img | train CPU ms/img |",
             "|---|---|---|---|---|---|---|---|"]
    print(head, flush=True)
    for name, opts in entries:
        for size in args.sizes:
            if size < specs[name].min_input_size:
                continue
            try:
                r = bench_one(name, opts, size, args)
            except InputError as e:
                print(f"skip {name} @{size}: {e}", flush=True)
                continue
            line = (f"| {r['backbone']} | {r['size']} | {r['params_m']:.2f} | {r['gflops']:.3f} | {r['fwd_ips']:.0f} "
                    f"| {r['train_ips']:.0f} | {r['fwd_cpu_ms']:.2f} | {r['train_cpu_ms']:.2f} |")
            lines.append(line)
            print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
