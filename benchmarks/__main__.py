"""python -m benchmarks: cnnfast against eager torch and torch.compile, side by side in one run.

Prints a table and writes <out>/<device-name>.json, .md and .png; a run of part of the cases
(--only, --dtype) writes <device-name>-partial.*, and a smoke test (--quick) <device-name>-quick.*,
so that neither replaces the full results. `python -m benchmarks.merge` puts partial runs together.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path

# Interpreted Triton is a test tool, not a speed: make sure triton is never imported in that mode.
# Run as a program only: a test importing this module must leave the interpreter switched on for
# the tests collected after it.
if __name__ == "__main__" and os.environ.pop("TRITON_INTERPRET", None):
    print("benchmarks: ignoring TRITON_INTERPRET (the benchmarks never run the Triton interpreter)",
          file=sys.stderr)

from tqdm import tqdm  # noqa: E402

from benchmarks import (cases_alexnet, cases_bn_relu_conv, cases_densenet, cases_models, harness, report,  # noqa: E402
                        targets)

CASE_MODULES = (cases_alexnet, cases_bn_relu_conv, cases_densenet, cases_models)
MODEL_MODULES = (cases_densenet, cases_models)  # whole-model training steps


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run (auto: cuda when torch sees a GPU)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: batch 2, a few short repeats, no peak-RSS processes")
    parser.add_argument("--only", metavar="SUBSTRING", action="append",
                        help="run the cases whose label (e.g. 'LRN 5 8x96x55x55 fp32 fwd+bwd cnnfast[cpu]') "
                             "contains SUBSTRING (any case), with their eager-torch baselines; repeat it for "
                             "the cases matching any of them")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="only the cases in this dtype")
    parser.add_argument("--no-model-compile", action="store_true",
                        help="on a GPU, time whole models without their torch.compile twin (each takes minutes "
                             "to compile, per dtype); the op rows keep theirs")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="start no comparison after this many seconds; the rows measured so far are "
                             "written as a partial run (as are those of a run stopped by SIGINT or SIGTERM)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="directory for the results files (default: benchmarks/results)")
    return parser.parse_args(argv)


def select(cases, only: list[str] | None, dtype: str | None = None):
    """The cases matching any of `only` (all without) in `dtype` (any without), plus the eager-torch
    row of each, so speed-ups can still be computed."""
    cases = [c for c in cases if dtype in (None, c.dtype)]
    if not only:
        return cases
    only = [o.lower() for o in only]
    groups = {c.group for c in cases if any(o in c.label.lower() for o in only)}
    return [c for c in cases if c.group in groups and (c.variant == "torch" or any(o in c.label.lower() for o in only))]


def results_name(device_name: str, args, stopped: str | None = None) -> str:
    """Only a whole run replaces <device>.json (the committed results): a partial or stopped run's
    rows go to <device>-partial.json, for benchmarks.merge, and a smoke test's to <device>-quick.json."""
    if args.quick:
        return device_name + "-quick"
    return device_name + ("-partial" if args.only or args.dtype or stopped else "")


def _stop_on_sigterm() -> None:
    """`timeout` and job schedulers stop a run with SIGTERM: end it as Ctrl-C does, so that the rows
    measured so far are still written."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupt)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = harness.detect_device(args.device)
    if args.quick:
        settings = harness.Settings(warmup=1, budget_s=0.2, min_reps=3, max_reps=20, gpu_warmup_ms=5,
                                    gpu_rep_ms=20, rss=False)
    else:
        settings = harness.Settings()
    variants, notes = harness.variants(device)
    model_variants = [v for v in variants if v != "torch.compile"] if args.no_model_compile else variants
    cases = select([c for m in CASE_MODULES
                    for c in m.cases(device, args.quick, model_variants if m in MODEL_MODULES else variants)],
                   args.only, args.dtype)
    if not cases:
        raise SystemExit(f"benchmarks: no case matches --only {args.only!r} --dtype {args.dtype}")
    meta = harness.metadata(device)  # before running: the commit and date the run started from

    started, load = time.perf_counter(), harness.BackgroundLoad()
    rows, copy_gbps, stopped = [], {}, None
    groups = list(dict.fromkeys(c.group for c in cases))  # the variants of one comparison run together
    with tqdm(total=len(cases), desc=f"benchmarks ({meta['device']})", unit="case") as bar:
        try:
            for group in groups:
                if args.time_limit is not None and time.perf_counter() - started > args.time_limit:
                    stopped = f"--time-limit {args.time_limit:g} s reached"
                    break
                members = [c for c in cases if c.group == group]
                bar.set_postfix_str(members[0].label.rsplit(" ", 1)[0])
                measured = harness.measure_group(members, device, settings, copy_gbps)
                for case, row in zip(members, measured):
                    if "error" in row:
                        tqdm.write(f"error: {case.label}: {row['error']}")
                rows.extend(measured)  # a group's rows are kept whole or not at all (an interrupt drops them)
                bar.update(len(members))
        except KeyboardInterrupt as interrupt:
            stopped = f"interrupted ({str(interrupt) or 'SIGINT'})"
    elapsed, other = time.perf_counter() - started, load.cores_busy()

    report.derive(rows)
    notes = notes + [f"{r['variant']} on {r['case']} {r['shape']} {r['dtype']} {r['pass']} "
                     f"{'skipped' if 'skipped' in r else 'failed'}: {r.get('skipped') or r.get('error')}"
                     for r in rows if "skipped" in r or "error" in r]
    if args.only or args.dtype:
        notes.append(f"partial run: --only {args.only!r} --dtype {args.dtype}")
    if stopped:
        notes.append(f"partial run: {stopped} after {len(rows)} of {len(cases)} cases; the comparisons not "
                     "run are missing")
    if args.no_model_compile and device == "cuda":
        notes.append("whole models ran without their torch.compile twin (--no-model-compile)")
    if device == "cpu" and other is not None and other > 0.1:
        notes.append(f"other processes kept {other:.2f} of {meta['cpu_cores']} cores busy during the run: "
                     "CPU times are inflated (in steps of the scheduler's tick) and noisy; rerun on a quiet machine")
    result = {
        "metadata": {**meta, "arguments": shlex.join(argv if argv is not None else sys.argv[1:]),
                     "run_seconds": round(elapsed, 1), "quick": args.quick, "other_processes_cores_busy": other},
        "device_type": device,
        "settings": vars(settings),
        "copy_gbps": copy_gbps,
        "rows": rows,
        "notes": notes,
    }
    targets.summarise(result)
    stem = report.write_results(args.out, results_name(meta["device"], args, stopped), result)

    print(report.table(rows, device))
    print("\nTargets:")
    print("\n".join(report.target_lines(result["targets"])))
    if result["backend_choice"]:
        print("\nauto's CUDA backend per op:")
        print("\n".join(report.choice_lines(result["backend_choice"])))
    for note in notes:
        print(f"note: {note}")
    print(f"\n{len(rows)} cases in {elapsed:.0f} s; wrote {stem}.json, .md, .png")
    return 1 if stopped or any("error" in r for r in rows) else 0


if __name__ == "__main__":
    _stop_on_sigterm()
    sys.exit(main())
