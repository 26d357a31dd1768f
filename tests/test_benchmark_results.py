"""Where the benchmarks write their results, and how benchmarks.merge puts partial runs together.
(The numbers themselves are the benchmarks' business, not the tests'.)"""
import json
import os

import pytest
import torch

from benchmarks import __main__ as bench
from benchmarks import harness, merge, targets

LRN_FWD = "LRN 5 2x96x55x55 fp32 fwd cnnfast"
POOL_FWD = "max-pool 3/2 2x96x55x55 fp32 fwd cnnfast"


@pytest.mark.parametrize("argv, name", [
    ([], "dev"),
    (["--no-model-compile"], "dev"),
    (["--only", "LRN"], "dev-partial"),
    (["--dtype", "bfloat16"], "dev-partial"),
    (["--quick"], "dev-quick"),
    (["--quick", "--only", "LRN"], "dev-quick"),
])
def test_only_a_whole_run_takes_the_device_name(argv, name):
    assert bench.results_name("dev", bench.parse_args(argv)) == name


def test_a_stopped_run_is_a_partial_run():
    assert bench.results_name("dev", bench.parse_args([]), stopped="interrupted") == "dev-partial"


def _run(tmp_path, *only):
    out = tmp_path / "run"
    argv = ["--quick", "--device", "cpu", "--out", str(out)] + [a for o in only for a in ("--only", o)]
    assert bench.main(argv) == 0
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 3 and all(f.rsplit(".", 1)[0].endswith("-quick") for f in files), files
    result = json.loads(next(out.glob("*.json")).read_text())
    for path in out.iterdir():
        path.unlink()
    return result


def test_partial_runs_merge_into_one_results_file(tmp_path):
    first = _run(tmp_path, LRN_FWD, POOL_FWD)
    second = _run(tmp_path, LRN_FWD)
    assert first["metadata"]["arguments"].startswith("--quick --device cpu")

    merged_dir = tmp_path / "merged"
    path = tmp_path / "first.json"
    path.write_text(json.dumps(first))
    path2 = tmp_path / "second.json"
    path2.write_text(json.dumps(second))
    assert merge.main([str(path), str(path2), "--out", str(merged_dir)]) == 0
    device = first["metadata"]["device"]
    assert sorted(p.name for p in merged_dir.iterdir()) == [f"{device}.{ext}" for ext in ("json", "md", "png")]

    result = json.loads((merged_dir / f"{device}.json").read_text())
    by_case = {(r["case"], r["variant"]): r for r in result["rows"]}
    assert len(result["rows"]) == 4
    # The LRN comparison comes from the later run, whole; max-pool only the first run measured.
    assert by_case[("LRN 5", "torch")]["median_ms"] == next(r["median_ms"] for r in second["rows"]
                                                          if r["variant"] == "torch")
    assert {r["run"] for r in result["rows"] if r["case"] == "LRN 5"} == {1}
    assert {r["run"] for r in result["rows"] if r["case"].startswith("max-pool")} == {0}
    lrn = by_case[("LRN 5", "cnnfast[cpu]")]
    assert lrn["speedup"] == pytest.approx(by_case[("LRN 5", "torch")]["median_ms"] / lrn["median_ms"])
    assert len(result["metadata"]["runs"]) == 2 and "2 of its 4 rows kept" in result["metadata"]["runs"][0]
    assert {t["target"] for t in result["targets"]} == {t["target"] for t in first["targets"]}
    assert "run 0: partial run" in " ".join(result["notes"])
    markdown = (merged_dir / f"{device}.md").read_text()
    assert "- runs:\n  - run 0: commit" in markdown


def test_a_run_stopped_part_way_writes_the_comparisons_it_finished(tmp_path, monkeypatch):
    measure, calls = harness.measure_group, []

    def interrupted_on_the_second_group(members, *args):
        calls.append(members[0].group)
        if len(calls) == 2:
            raise KeyboardInterrupt("signal 15")  # what SIGTERM becomes when run as a program
        return measure(members, *args)

    monkeypatch.setattr(harness, "measure_group", interrupted_on_the_second_group)
    out = tmp_path / "run"
    assert bench.main(["--quick", "--device", "cpu", "--out", str(out), "--only", LRN_FWD, "--only", POOL_FWD]) == 1
    result = json.loads(next(out.glob("*.json")).read_text())
    assert len(calls) == 2 and {r["case"] for r in result["rows"]} == {"LRN 5"} and len(result["rows"]) == 2
    assert any("interrupted (signal 15) after 2 of 4 cases" in n for n in result["notes"])


def test_a_run_past_its_time_limit_starts_no_comparison(tmp_path):
    out = tmp_path / "run"
    assert bench.main(["--quick", "--device", "cpu", "--out", str(out), "--only", LRN_FWD, "--time-limit", "0"]) == 1
    result = json.loads(next(out.glob("*.json")).read_text())
    assert result["rows"] == [] and any("--time-limit 0 s reached after 0 of 2 cases" in n for n in result["notes"])


def test_auto_backend_choice_covers_every_benchmarked_op():
    def rows(op, triton_over_cuda):
        return [{"op": op, "shape": "s", "dtype": "bf16", "pass": "fwd", "variant": variant, "median_ms": ms}
                for variant, ms in (("cnnfast[cuda]", 1.0), ("cnnfast[triton]", triton_over_cuda))]
    choice = targets.backend_choice(rows("lrn", 0.5) + rows("relu_lrn_max_pool", 2.0) + rows("max_pool", 1.5)
                                    + rows("bn_relu_conv1x1_to128", 0.25) + rows("bn_relu_conv3x3_to32", 1.0))
    by_op = {c["op"]: c for c in choice}
    assert {op: c["faster"] for op, c in by_op.items()} == {
        "local_response_norm": "triton", "max_pool2d": "cuda", "relu_lrn_max_pool2d": "cuda",
        "bn_relu_conv2d": "triton"}
    assert by_op["bn_relu_conv2d"]["rows"] == 2 and by_op["bn_relu_conv2d"]["triton_over_cuda_time"] == 0.5


def _synthetic(**metadata):
    rows = [{"op": "lrn", "case": "LRN 5", "shape": "2x3x4x4", "dtype": "fp32", "pass": "fwd", "variant": v,
             "median_ms": ms} for v, ms in (("torch", 2.0), ("cnnfast[cpu]", 1.0))]
    meta = {"device": "cpu-x-2cores", "device_description": "x, 2 cores", "torch": "2.13.0", "triton": "3.6.0",
            "cuda": None, "cpu_cores": 2, "cpu_threads": 2, "commit": "abc", "date": "2026-12-06", "quick": False}
    return {"metadata": {**meta, **metadata}, "device_type": "cpu", "settings": {}, "copy_gbps": {}, "rows": rows,
            "notes": []}


def test_merge_refuses_runs_of_different_stacks():
    with pytest.raises(ValueError, match=r"torch \('2.13.0' vs '2.12.0' in run 1\)"):
        merge.merge([_synthetic(), _synthetic(torch="2.12.0")])
    with pytest.raises(ValueError, match="--quick"):
        merge.merge([_synthetic(), _synthetic(quick=True)])
    with pytest.raises(ValueError, match="no runs"):
        merge.merge([])


def test_merge_names_runs_of_different_commits():
    result = merge.merge([_synthetic(), _synthetic(commit="def")])
    assert result["metadata"]["commit"] == "abc, def"
    assert any("different commits" in n for n in result["notes"])
    assert [r["run"] for r in result["rows"]] == [1, 1]
    assert result["rows"][1]["speedup"] == 2.0


def test_merge_cli_says_what_it_cannot_read(tmp_path):
    with pytest.raises(SystemExit, match="cannot read"):
        merge.main([str(tmp_path / "missing.json")])


def test_the_benchmarks_leave_the_triton_interpreter_to_the_tests(tmp_path):
    # The benchmarks switch the interpreter off when run as a program; imported and run here,
    # they must not, or every Triton test collected after this file would be skipped.
    _run(tmp_path, LRN_FWD)
    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1"
