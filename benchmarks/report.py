"""Turns one run's rows into what people read: the table (terminal and markdown), the JSON, the
markdown file with the targets, and the PNG chart."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on the machines that run this
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

MIB = 2**20


def comparison(row: dict) -> tuple:
    """The rows that compare with each other: same op, shape, dtype and pass (harness.Case.group,
    as stored in a row)."""
    return (row["op"], row["shape"], row["dtype"], row["pass"])


def derive(rows: list[dict]) -> None:
    """Adds each row's speed-up, saved-bytes and peak-memory ratios against eager torch on the same case."""
    base = {comparison(r): r for r in rows if r["variant"] == "torch"}
    for r in rows:
        b = base.get(comparison(r))
        r["speedup"] = b["median_ms"] / r["median_ms"] if b and "median_ms" in b and "median_ms" in r else None
        r["saved_ratio"] = (r["saved_bytes"] / b["saved_bytes"]
                            if b and b.get("saved_bytes") and "saved_bytes" in r else None)
        r["peak_ratio"] = (r["peak_bytes"] / b["peak_bytes"]
                           if b and b.get("peak_bytes") and "peak_bytes" in r else None)


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def table(rows: list[dict], device: str) -> str:
    """A markdown table, padded so it also reads in a terminal."""
    head = ["case", "shape", "dtype", "pass", "variant", "median ms", "p20–p80 ms", "speed-up",
            "saved MiB", "saved vs torch", "peak MiB"]
    if device == "cuda":
        head += ["GB/s", "% of copy"]
    head.append("notes")
    body = []
    for r in rows:
        line = [r["case"], r["shape"], r["dtype"], r["pass"], r["variant"], _fmt(r.get("median_ms"), ".3f"),
                f"{r['p20_ms']:.3f}–{r['p80_ms']:.3f}" if "p20_ms" in r else "–",
                _fmt(r.get("speedup"), ".2f", "x"),
                _fmt(r["saved_bytes"] / MIB if "saved_bytes" in r else None, ".2f"),
                _fmt(r.get("saved_ratio"), ".3f", "x"),
                _fmt(r["peak_bytes"] / MIB if r.get("peak_bytes") is not None else None, ".1f")]
        if device == "cuda":
            line += [_fmt(r.get("gbps"), ".0f"), _fmt(100 * r["copy_fraction"] if "copy_fraction" in r else None, ".0f")]
        notes = list(r.get("notes", []))
        for key in ("error", "skipped"):
            if key in r:
                notes.insert(0, f"{key}: {r[key]}")
        line.append("; ".join(notes))
        body.append(line)
    widths = [max(len(str(c)) for c in column) for column in zip(head, *body)]

    def fmt_line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([fmt_line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [fmt_line(line) for line in body])


def target_lines(targets: list[dict]) -> list[str]:
    return [f"{t['status']:4}  {t['target']} — {t['detail']}" for t in targets]


def choice_lines(choices: list[dict]) -> list[str]:
    return [f"{c['op']}: cnnfast[{c['faster']}] is faster (Triton time / CUDA time, geometric mean over "
            f"{c['rows']} rows: {c['triton_over_cuda_time']:.2f}; Triton faster on {c['triton_wins']}); "
            f"AUTO_CUDA_CHOICE says {c['auto_cuda_choice']!r}" + ("" if c["agrees"] else " -> change it")
            for c in choices]


def write_json(path: Path, result: dict) -> None:
    path.write_text(json.dumps(result, indent=1) + "\n")


def write_markdown(path: Path, result: dict, chart_name: str) -> None:
    meta, device = result["metadata"], result["device_type"]
    lines = [f"# cnnfast benchmarks: {meta['device']}", ""]
    for key, value in meta.items():  # a merged file's "runs" is a list: one line each
        lines += [f"- {key}:"] + [f"  - {v}" for v in value] if isinstance(value, list) else [f"- {key}: {value}"]
    lines += [f"- settings: {json.dumps(result['settings'])}", ""]
    lines += ["Times are medians after warm-up (torch.compile's compilation excluded); speed-up and "
              "saved-bytes ratio are against eager torch on the same case. Saved = distinct storages kept "
              "for backward, parameters left out (activation memory); a fwd+bwd step differentiates the "
              "input and every parameter; peak = " + ("`torch.cuda.max_memory_allocated` above the inputs during one step"
                                         if device == "cuda" else
                                         "RSS above the inputs during one fwd+bwd step, in a fresh process")
              + "." + (" GB/s counts the traffic no kernel can avoid; % of copy is against a device copy "
                       "of the same tensor in this run." if device == "cuda" else ""), ""]
    if result.get("copy_gbps"):
        lines += ["Copy bandwidth: " + ", ".join(f"{k}: {v:.0f} GB/s" for k, v in result["copy_gbps"].items()), ""]
    lines += [table(result["rows"], device), "", "## Targets", "", "```"]
    lines += target_lines(result["targets"]) + ["```", ""]
    if result.get("backend_choice"):
        lines += ["## auto's CUDA backend per op", "", "```"] + choice_lines(result["backend_choice"]) + ["```", ""]
    if result.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    lines += [f"![speed-up and saved bytes against torch]({chart_name})", ""]
    path.write_text("\n".join(lines))


def write_results(out_dir: Path, name: str, result: dict) -> Path:
    """Writes <out_dir>/<name>.json, .md and .png; returns <out_dir>/<name>."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / name
    meta = result["metadata"]
    write_json(stem.with_suffix(".json"), result)
    draw_chart(stem.with_suffix(".png"), result["rows"],
               f"cnnfast vs torch — {meta['device_description']} — {meta['commit']} — {meta['date']}")
    write_markdown(stem.with_suffix(".md"), result, stem.with_suffix(".png").name)
    return stem


def _grouped_barh(ax, groups: list[str], variants: list[str], value) -> None:
    """Horizontal bars, one group per case, one bar per variant, on a log axis."""
    height = 0.8 / max(len(variants), 1)
    for i, variant in enumerate(variants):
        values = [value(g, variant) for g in groups]
        ys = [j + (i - (len(variants) - 1) / 2) * height for j in range(len(groups))]
        ax.barh([y for y, v in zip(ys, values) if v], [v for v in values if v], height=height, label=variant)
    ax.set_yticks(range(len(groups)), groups, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    # Plain numbers (2, not 2x10^0); minor ticks labelled at 2, 3 and 5 only, so they do not crowd.
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "235" else ""))
    ax.tick_params(axis="x", which="minor", labelsize=6)
    ax.grid(axis="x", which="both", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    if handles:  # a panel with no rows has none to name
        ax.legend(fontsize=7)


def draw_chart(path: Path, rows: list[dict], title: str) -> None:
    def group(r):
        return f"{r['case']} {r['shape']} {r['dtype']} {r['pass']}"
    groups = list(dict.fromkeys(group(r) for r in rows))
    bwd_groups = [g for g in groups if g.endswith("fwd+bwd")]
    variants = [v for v in dict.fromkeys(r["variant"] for r in rows) if v != "torch"]
    by_key = {(group(r), r["variant"]): r for r in rows}

    height = max(3, 1.2 + 0.32 * len(groups) * max(len(variants), 1) / 2)  # 3 in: room for the titles
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(14, height), gridspec_kw={"width_ratios": [1.2, 1]})
    _grouped_barh(speed, groups, variants, lambda g, v: by_key.get((g, v), {}).get("speedup"))
    speed.axvline(1, color="k", lw=0.8)
    speed.set_xlabel("speed-up vs eager torch (log; >1 is faster)")
    speed.set_title("time", fontsize=9)
    _grouped_barh(memory, bwd_groups, variants, lambda g, v: by_key.get((g, v), {}).get("saved_ratio"))
    memory.axvline(1, color="k", lw=0.8)
    memory.axvline(0.1, color="grey", lw=0.8, ls="--")
    memory.set_xlabel("bytes saved for backward / torch's (log; <1 keeps less)")
    memory.set_title("memory kept for backward (fwd+bwd cases)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
