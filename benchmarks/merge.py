"""python -m benchmarks.merge RUN.json [RUN.json ...]: one results file from several runs.

A GPU call holds only part of the benchmark (see tools/gpu_session.sh), and a partial run writes
<device>-partial.json rather than overwrite the full results. This puts such runs, of one device
and one software stack, into benchmarks/results/<device>.json, .md and .png. A comparison (one op,
shape, dtype and pass, all its variants) is taken whole from the last run that measured it, so
every speed-up and memory ratio still compares rows measured side by side in one run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import report, targets

# What must agree for rows of different runs to sit in one table.
SAME_STACK = ("device", "device_description", "torch", "triton", "cuda", "cudnn", "cpu_cores", "cpu_threads")


def merge(runs: list[dict]) -> dict:
    """The results of `runs` (loaded results files, oldest first) as one results dict."""
    if not runs:
        raise ValueError("merge: no runs given")
    first = runs[0]
    for i, run in enumerate(runs[1:], 1):
        if run["device_type"] != first["device_type"]:
            raise ValueError(f"merge: run {i} is on {run['device_type']}, run 0 on {first['device_type']}")
        differ = [k for k in SAME_STACK if run["metadata"].get(k) != first["metadata"].get(k)]
        if differ:
            raise ValueError("merge: the runs differ in " + ", ".join(
                f"{k} ({first['metadata'].get(k)!r} vs {run['metadata'].get(k)!r} in run {i})" for k in differ))
        if run["metadata"].get("quick") != first["metadata"].get("quick"):
            raise ValueError(f"merge: run {i} and run 0 differ in --quick; a smoke test's numbers "
                             "do not belong with measured ones")

    latest: dict[tuple, int] = {}  # comparison -> the last run that measured it
    for i, run in enumerate(runs):
        for row in run["rows"]:
            latest[report.comparison(row)] = i
    rows = []
    for i, run in enumerate(runs):
        rows += [{**row, "run": i} for row in run["rows"] if latest[report.comparison(row)] == i]

    copy_gbps = {}
    for run in runs:
        copy_gbps.update(run.get("copy_gbps", {}))
    metadata = {k: v for k, v in runs[-1]["metadata"].items()
                if k not in ("commit", "date", "run_seconds", "arguments", "other_processes_cores_busy")}
    metadata["runs"] = [f"run {i}: commit {run['metadata'].get('commit')}, {run['metadata'].get('date')}, "
                        f"{run['metadata'].get('run_seconds')} s, "
                        f"`python -m benchmarks {run['metadata'].get('arguments', '?')}`, "
                        f"{sum(latest[report.comparison(r)] == i for r in run['rows'])} of its {len(run['rows'])} rows kept"
                        for i, run in enumerate(runs)]
    commits = list(dict.fromkeys(run["metadata"].get("commit") for run in runs))
    metadata["commit"] = ", ".join(commits)
    metadata["date"] = runs[-1]["metadata"].get("date")
    result = {
        "metadata": metadata,
        "device_type": first["device_type"],
        "settings": runs[-1]["settings"] if all(r["settings"] == runs[-1]["settings"] for r in runs)
        else [r["settings"] for r in runs],
        "copy_gbps": copy_gbps,
        "rows": rows,
        "notes": [f"run {i}: {note}" for i, run in enumerate(runs) for note in run.get("notes", [])],
    }
    if len(commits) > 1:
        result["notes"].append("the runs are of different commits: " + ", ".join(commits))
    report.derive(rows)
    targets.summarise(result)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.merge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="results files (.json), oldest first")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="directory for the merged <device>.json, .md and .png (default: benchmarks/results)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = []
    for path in args.runs:
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"benchmarks.merge: cannot read {path}: {error}")
    try:
        result = merge(runs)
    except ValueError as error:
        raise SystemExit(f"benchmarks.{error}")
    stem = report.write_results(args.out, result["metadata"]["device"], result)
    print("\n".join(report.target_lines(result["targets"])))
    print(f"\n{len(result['rows'])} rows from {len(runs)} runs; wrote {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
