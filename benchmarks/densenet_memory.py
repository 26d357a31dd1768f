"""python -m benchmarks.densenet_memory: DenseNet memory against depth, and the largest batch that
fits a memory budget, for the plain, the torch.utils.checkpoint and cnnfast's DenseNets.

1. Bytes saved for backward by one training step of DenseNet-BC (k=12, 32x32) at depths 40 to 250
   (and, on a GPU, the step's CUDA peak): <out>/<device>-densenet-memory.json and .png.
2. The largest batch of DenseNet-264 (224x224) whose training step fits --budget-gib: on a GPU by
   trying batches under that memory limit; on a CPU estimated as (budget - parameters and their
   gradients) / (bytes saved for backward per sample, from batches 1 and 2): activation memory
   only, no workspace; the results say which.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Run as a program only: a test importing this module must leave the interpreter switched on for
# the tests collected after it.
if __name__ == "__main__" and os.environ.pop("TRITON_INTERPRET", None):
    print("benchmarks: ignoring TRITON_INTERPRET (the benchmarks never run the Triton interpreter)", file=sys.stderr)

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import cnnfast  # noqa: E402
from benchmarks import harness  # noqa: E402
from benchmarks.cases_densenet import three_models  # noqa: E402
from cnnfast import models  # noqa: E402

DEPTHS = (40, 100, 160, 190, 250)
VARIANTS = ("plain", "checkpoint", "cnnfast")


def _step_memory(model, x) -> dict:
    """Saved bytes (parameters left out) and, on a GPU, the CUDA peak of one training step."""
    parameters = list(model.parameters())
    _, saved = cnnfast.saved_tensor_bytes(model, x.detach().requires_grad_(True), exclude=parameters)
    result = {"saved_bytes": saved}
    if x.is_cuda:
        def step():
            xi = x.detach().requires_grad_(True)
            torch.autograd.grad(model(xi).sum(), [xi, *parameters])
        result["peak_bytes"] = harness.cuda_peak_bytes(step)
    return result


def memory_against_depth(device: str, batch: int) -> list[dict]:
    rows = []
    for depth in DEPTHS:
        built = three_models(lambda **kw: models.densenet_bc(depth, 12, **kw), device, torch.float32)
        x = torch.randn(batch, 3, 32, 32, device=device)
        for variant in VARIANTS:
            rows.append({"depth": depth, "variant": variant, **_step_memory(built[variant], x)})
            print(f"DenseNet-BC-{depth} k12 batch {batch} {variant}: saved "
                  f"{rows[-1]['saved_bytes'] / 2**20:.1f} MiB", flush=True)
        del built
    return rows


def _fits(model, batch: int, device: str) -> bool:
    try:
        x = torch.randn(batch, 3, 224, 224, device=device).requires_grad_(True)
        torch.autograd.grad(model(x).sum(), [x, *model.parameters()])
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        torch.cuda.empty_cache()


def largest_batch(device: str, budget_gib: float) -> list[dict]:
    built = three_models(models.densenet264, device, torch.float32)
    rows = []
    for variant in VARIANTS:
        model = built[variant]
        if device == "cuda":
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gib * 2**30 / total))
            low, high = 0, 1
            while _fits(model, high, device):
                low, high = high, high * 2
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if _fits(model, middle, device) else (low, middle)
            torch.cuda.set_per_process_memory_fraction(1.0)
            rows.append({"variant": variant, "largest_batch": low, "method": "tried under the CUDA memory limit"})
        else:
            one, two = (_step_memory(model, torch.randn(b, 3, 224, 224))["saved_bytes"] for b in (1, 2))
            per_sample, fixed = two - one, 2 * one - two
            weights_and_grads = 2 * sum(p.numel() * p.element_size() for p in model.parameters())
            rows.append({"variant": variant, "saved_bytes_per_sample": per_sample,
                         "largest_batch": int((budget_gib * 2**30 - weights_and_grads - fixed) // per_sample),
                         "method": "estimated: (budget - weights and gradients) / saved bytes per sample"})
        print(f"DenseNet-264 in {budget_gib} GiB, {variant}: batch {rows[-1]['largest_batch']} "
              f"({rows[-1]['method']})", flush=True)
    return rows


def draw(path: Path, rows: list[dict], title: str) -> None:
    figure, axes = plt.subplots(1, 2 if any("peak_bytes" in r for r in rows) else 1, figsize=(11, 4.5),
                                squeeze=False)
    for ax, key, label in zip(axes[0], ("saved_bytes", "peak_bytes"), ("saved for backward", "CUDA peak")):
        for variant in VARIANTS:
            points = [(r["depth"], r[key] / 2**20) for r in rows if r["variant"] == variant and key in r]
            ax.plot(*zip(*points), marker="o", label=variant)
        ax.set_xlabel("DenseNet-BC depth (layers)")
        ax.set_ylabel(f"MiB {label}")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.densenet_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--budget-gib", type=float, default=16.0, help="memory budget for DenseNet-264 (GiB)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    device = harness.detect_device(args.device)
    meta = harness.metadata(device)
    batch = 64 if device == "cuda" else 2
    result = {"metadata": meta, "depth_batch": batch, "depths": memory_against_depth(device, batch),
              "budget_gib": args.budget_gib, "densenet264": largest_batch(device, args.budget_gib)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{meta['device']}-densenet-memory"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    draw(stem.with_suffix(".png"), result["depths"],
         f"DenseNet-BC (k=12) training step, batch {batch}, {meta['device']} (commit {meta['commit']})")
    print(f"wrote {stem}.json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
