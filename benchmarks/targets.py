"""The project's speed and memory targets, judged from the rows of one run; and, on a GPU, which
of the CUDA and Triton kernels `auto` should pick per op (cnnfast._backend.AUTO_CUDA_CHOICE).

A target is PASS when every row it covers meets it, MISS when one does not, and N/A when the run
has no such row (another device, or --only left them out).
"""
from __future__ import annotations

import math

from benchmarks.report import comparison
from cnnfast._backend import AUTO_CUDA_CHOICE


def _is_op(name: str, op: str) -> bool:
    """Whether a row's op `name` is `op` (an op name, or a prefix ending in '*')."""
    return name.startswith(op[:-1]) if op.endswith("*") else name == op


def _rows(rows, op, variant, passes=("fwd", "fwd+bwd")):
    """Rows of `op` (an op name, or a prefix ending in '*')."""
    return [r for r in rows if _is_op(r["op"], op) and r["variant"] == variant and r["pass"] in passes]


def _over_compile(rows: list[dict]):
    """Per row: torch.compile's time over this row's (same comparison); None where compile did not run."""
    compiled = {comparison(r): r.get("median_ms") for r in rows if r["variant"] == "torch.compile"}

    def ratio(r):
        ms = compiled.get(comparison(r))
        return ms / r["median_ms"] if ms else None
    return ratio


def _target(name: str, rows: list[dict], ok, describe) -> dict:
    measured = [r for r in rows if "median_ms" in r]
    if not rows:
        return {"status": "N/A", "target": name, "detail": "no such row in this run"}
    if len(measured) < len(rows):
        failed = [r for r in rows if "median_ms" not in r]
        return {"status": "MISS", "target": name,
                "detail": "did not run: " + "; ".join(r.get("error") or r.get("skipped", "?") for r in failed)}
    status = "PASS" if all(ok(r) for r in measured) else "MISS"
    detail = "; ".join(f"{r['shape']} {r['dtype']} {r['pass']}: {describe(r)}" for r in measured)
    return {"status": status, "target": name, "detail": detail}


def _x(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def evaluate(rows: list[dict], device: str) -> list[dict]:
    if device == "cpu":
        v = "cnnfast[cpu]"
        return [
            _target("CPU: LRN fwd+bwd >= 3x torch.nn.LocalResponseNorm (eager)",
                    _rows(rows, "lrn", v, ("fwd+bwd",)),
                    lambda r: (r.get("speedup") or 0) >= 3, lambda r: _x(r.get("speedup"))),
            _target("CPU: max-pool fwd+bwd >= 1x torch, keeping <= 1/10 of torch's saved bytes",
                    _rows(rows, "max_pool", v, ("fwd+bwd",)),
                    lambda r: (r.get("speedup") or 0) >= 1 and (r.get("saved_ratio") or math.inf) <= 0.1,
                    lambda r: f"{_x(r.get('speedup'))}, saved {_x(r.get('saved_ratio'))} of torch's"),
            _target("CPU: BN-ReLU-conv fwd+bwd at most 15% slower than eager, keeping <= 55% of its saved bytes",
                    _rows(rows, "bn_relu_conv*", v, ("fwd+bwd",)),
                    lambda r: (r.get("speedup") or 0) >= 1 / 1.15 and (r.get("saved_ratio") or math.inf) <= 0.55,
                    lambda r: f"{_x(r.get('speedup'))}, saved {_x(r.get('saved_ratio'))}"),
            _target("CPU: DenseNet-121 training step within 10% of the plain model's time, keeping <= 25% of "
                    "its saved bytes", _rows(rows, "model_densenet121", v, ("fwd+bwd",)),
                    lambda r: (r.get("speedup") or 0) >= 1 / 1.1 and (r.get("saved_ratio") or math.inf) <= 0.25,
                    lambda r: f"{_x(r.get('speedup'))}, saved {_x(r.get('saved_ratio'))}"),
            *_model_targets(rows, v, "CPU"),
        ]
    over_compile = _over_compile(rows)
    v = "cnnfast[auto]"  # what users get on a GPU
    return [
        _target("GPU: LRN >= 80% of copy bandwidth", _rows(rows, "lrn", v),
                lambda r: r.get("copy_fraction", 0) >= 0.8,
                lambda r: f"{r['gbps']:.0f} GB/s = {100 * r['copy_fraction']:.0f}% of copy"),
        _target("GPU: LRN >= 5x torch (eager)", _rows(rows, "lrn", v),
                lambda r: (r.get("speedup") or 0) >= 5, lambda r: _x(r.get("speedup"))),
        _target("GPU: max-pool fwd+bwd >= 1.2x torch (eager)", _rows(rows, "max_pool", v, ("fwd+bwd",)),
                lambda r: (r.get("speedup") or 0) >= 1.2, lambda r: _x(r.get("speedup"))),
        _target("GPU: BN-ReLU-conv 1x1 fwd+bwd >= 1.3x eager and >= 1.1x torch.compile",
                _rows(rows, "bn_relu_conv1x1*", v, ("fwd+bwd",)),
                lambda r: (r.get("speedup") or 0) >= 1.3 and (over_compile(r) or 0) >= 1.1,
                lambda r: f"{_x(r.get('speedup'))} eager, {_x(over_compile(r))} compile"),
        _target("GPU: BN-ReLU-conv 3x3 fwd+bwd >= 1x eager", _rows(rows, "bn_relu_conv3x3*", v, ("fwd+bwd",)),
                lambda r: (r.get("speedup") or 0) >= 1, lambda r: _x(r.get("speedup"))),
        _target("GPU: DenseNet-121 training step within 5% of the plain model's time, keeping <= 25% of its "
                "saved bytes and a CUDA peak <= 35% of its", _rows(rows, "model_densenet121", v, ("fwd+bwd",)),
                lambda r: ((r.get("speedup") or 0) >= 1 / 1.05 and (r.get("saved_ratio") or math.inf) <= 0.25
                           and (r.get("peak_ratio") or math.inf) <= 0.35),
                lambda r: f"{_x(r.get('speedup'))}, saved {_x(r.get('saved_ratio'))}, peak {_x(r.get('peak_ratio'))}"),
        _target("GPU: AlexNet (paper) training step >= 1.5x eager", _rows(rows, "model_alexnet_paper", v, ("fwd+bwd",)),
                lambda r: (r.get("speedup") or 0) >= 1.5, lambda r: _x(r.get("speedup"))),
        *_model_targets(rows, v, "GPU"),
    ]


def _model_targets(rows: list[dict], variant: str, device: str) -> list[dict]:
    """The whole-model targets of every device."""
    return [
        _target(f"{device}: ResNet-50 training step keeps <= 85% of torchvision's saved bytes",
                _rows(rows, "model_resnet50", variant, ("fwd+bwd",)),
                lambda r: (r.get("saved_ratio") or math.inf) <= 0.85, lambda r: f"saved {_x(r.get('saved_ratio'))}"),
        _target(f"{device}: no model's training step slower than its eager torch.nn twin",
                _rows(rows, "model_*", variant, ("fwd+bwd",)),
                lambda r: (r.get("speedup") or 0) >= 1, lambda r: f"{r['case']} {_x(r.get('speedup'))}"),
    ]


# The ops whose CUDA-tensor backend `auto` chooses, by their rows' op name ("bn_relu_conv*": every
# shape of BNReLUConv2d). bn_relu and bn_add_relu have no rows of their own: they stay on "cuda".
AUTO_OPS = {"lrn": "local_response_norm", "max_pool": "max_pool2d", "relu_lrn_max_pool": "relu_lrn_max_pool2d",
            "bn_relu_conv*": "bn_relu_conv2d"}


def backend_choice(rows: list[dict]) -> list[dict]:
    """Per op: the geometric mean over its rows (shapes, dtypes, passes) of Triton's time over
    the CUDA kernels' time; below 1 Triton is faster."""
    timed = {(*comparison(r), r["variant"]): r["median_ms"] for r in rows if "median_ms" in r}
    choices = []
    for op, key in AUTO_OPS.items():
        ratios = [timed[(o, s, d, p, "cnnfast[triton]")] / ms
                  for (o, s, d, p, v), ms in timed.items()
                  if _is_op(o, op) and v == "cnnfast[cuda]" and (o, s, d, p, "cnnfast[triton]") in timed]
        if not ratios:
            continue
        geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        faster = "triton" if geomean < 1 else "cuda"
        choices.append({"op": key, "faster": faster, "triton_over_cuda_time": geomean, "rows": len(ratios),
                        "triton_wins": sum(r < 1 for r in ratios), "auto_cuda_choice": AUTO_CUDA_CHOICE.get(key),
                        "agrees": AUTO_CUDA_CHOICE.get(key) == faster})
    return choices


def summarise(result: dict) -> None:
    """Sets a results dict's "targets" and, on a GPU, "backend_choice" from its (derived) rows."""
    rows, device = result["rows"], result["device_type"]
    result["targets"] = evaluate(rows, device)
    result["backend_choice"] = backend_choice(rows) if device == "cuda" else []
