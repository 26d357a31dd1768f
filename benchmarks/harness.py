"""The one benchmark harness: every case module hands its cases to `measure`, so every figure in
a results file is taken the same way.

- device: `detect_device` and `device_name` (the results file's name);
- time: CUDA -> `triton.testing.do_bench` (median, 20/80 quantiles; it flushes L2 between calls),
  CUDA events where triton is missing; CPU -> `time.perf_counter` over repeats, within a time
  budget per case, the variants of one comparison interleaved; always after warm-up, and never
  counting torch.compile's compilation;
- memory, three ways: bytes saved for backward (`cnnfast.saved_tensor_bytes`,
  any device; the parameters a case declares are left out: activation memory), the `torch.cuda.max_memory_allocated` delta of one step on a GPU, and the peak RSS
  of one step in a fresh process on a CPU;
- bandwidth: GB/s of a case's unavoidable traffic, against a device copy of the same tensor
  measured in the same run (GPU);
- `metadata` for every results file.

`measure_group` runs one comparison (the variants of one op, shape, dtype and pass) at a time.
"""
from __future__ import annotations

import dataclasses
import datetime
import gc
import importlib
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

import cnnfast

ROOT = Path(__file__).resolve().parent.parent  # the checkout: where `benchmarks` and git live

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class Ops(NamedTuple):
    """What a case's setup function `setup(device, dtype, *setup_args)` returns: the same
    computation written with torch.nn (also what torch.compile compiles) and with cnnfast, and the
    parameters a training step differentiates besides the input (shared by both)."""
    torch: Callable[[torch.Tensor], torch.Tensor]
    cnnfast: Callable[[torch.Tensor], torch.Tensor]
    parameters: tuple = ()
    # The "torch.checkpoint" variant, where a case has one: the torch.nn computation with
    # torch.utils.checkpoint where its authors put it (for DenseNet, torchvision's scheme).
    checkpoint: Callable[[torch.Tensor], torch.Tensor] | None = None


def share_parameters(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """target uses source's Parameter objects (buffers stay its own): two implementations of one
    model, compared on the same weights, differentiate the same parameters."""
    for name, parameter in source.named_parameters():
        module, _, attribute = name.rpartition(".")
        setattr(target.get_submodule(module), attribute, parameter)


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the results. Plain data, so a fresh process can rebuild it (peak RSS)."""
    op: str                 # what the targets look for: "lrn", "max_pool", "relu_lrn_max_pool"
    name: str               # shown in the table
    setup: str              # "module:function" returning Ops; importable in a fresh process
    shape: tuple[int, ...]
    dtype: str              # a key of DTYPES
    backward: bool          # forward only, or forward + backward
    variant: str            # "torch", "torch.compile", "torch.checkpoint" or "cnnfast[<backend>]"
    ideal_bytes: int        # traffic no kernel can avoid (each input read, each output written once); 0: n/a
    setup_args: tuple = ()  # passed to the setup function after device and dtype

    @property
    def group(self) -> tuple:
        """The rows that compare with each other: same computation, shape, dtype and pass."""
        return (self.op, self.shape, self.dtype, self.backward)

    @property
    def label(self) -> str:
        return f"{self.name} {shape_str(self.shape)} {SHORT_DTYPE[self.dtype]} {pass_str(self.backward)} {self.variant}"


@dataclasses.dataclass(frozen=True)
class Settings:
    warmup: int = 2            # CPU: untimed steps after the first (compiling) call
    budget_s: float = 2.0      # CPU: time one case for about this long...
    # ...but at least this many steps: whole-model steps take ~1 s on a small CPU, and with 5 rounds
    # their medians moved by 5-10% from run to run on a shared VM, more than the effects measured.
    min_reps: int = 12
    max_reps: int = 100        # ...and at most this many
    gpu_warmup_ms: int = 25    # do_bench's warm-up and measuring time, in ms
    gpu_rep_ms: int = 100
    rss: bool = True           # CPU: peak RSS of one step in a fresh process (a few seconds a case)


def model_step_cases(setup: str, entries, device: str, quick: bool, variants: list[str],
                     extra_variants: tuple[str, ...] = ()) -> list[Case]:
    """Training-step cases of whole models, `setup(device, dtype, constructor)` building them; entries
    are (label, constructor, input size, CPU batch, GPU batch). Whole models are not given to
    torch.compile on a CPU: minutes of compilation on 2 cores each. `extra_variants` run right after
    eager torch (DenseNet's "torch.checkpoint")."""
    dtypes = ("float32", "bfloat16") if device == "cuda" else ("float32",)
    chosen = [v for v in variants if v != "torch.compile" or device == "cuda"]
    chosen[1:1] = extra_variants
    result = []
    for label, constructor, size, cpu_batch, gpu_batch in entries:
        batch = 2 if quick else (gpu_batch if device == "cuda" else cpu_batch)
        for dtype in dtypes:
            for variant in chosen:
                result.append(Case(op=f"model_{constructor}", name=label, setup=setup, shape=(batch, 3, size, size),
                                   dtype=dtype, backward=True, variant=variant, ideal_bytes=0,
                                   setup_args=(constructor,)))
    return result


def shape_str(shape) -> str:
    return "x".join(str(s) for s in shape)


def pass_str(backward: bool) -> str:
    return "fwd+bwd" if backward else "fwd"


# ---------------------------------------------------------------------------------------- device

def detect_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks: --device cuda, but torch sees no GPU "
                         f"(torch {torch.__version__}, CUDA {torch.version.cuda})")
    return requested


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use, not what the host has
    except AttributeError:
        return os.cpu_count() or 1


def device_description(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{_cpu_model()}, {_cpu_cores()} cores"


def _slug(text: str) -> str:
    # "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz" -> "intel-xeon-platinum-8480"
    text = re.sub(r"\((r|tm)\)|@.*$|\bcpu\b|\bprocessor\b", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def device_name(device: str) -> str:
    """The results files' name: `cuda-nvidia-h100-80gb-hbm3`, `cpu-amd-epyc-2cores`."""
    if device == "cuda":
        return f"cuda-{_slug(torch.cuda.get_device_name())}"
    return f"cpu-{_slug(_cpu_model())}-{_cpu_cores()}cores"


def variants(device: str) -> tuple[list[str], list[str]]:
    """The variants that run on `device`, and a note for each that cannot. The Triton backend is
    never run on CPU tensors: that is the interpreter, a test tool, not a speed."""
    names, notes = ["torch", "torch.compile"], []
    if not cnnfast.extension_loaded():
        notes.append(f"cnnfast._C did not load ({cnnfast.LOAD_ERROR}): no cnnfast variant was run")
        return names, notes
    if device == "cpu":
        return names + ["cnnfast[cpu]"], notes
    if cnnfast.cuda_kernels_built():
        names.append("cnnfast[cuda]")
    else:
        notes.append("cnnfast[cuda] not run: cnnfast._C was built without CUDA kernels")
    try:
        import triton  # noqa: F401
        names.append("cnnfast[triton]")
    except ImportError:
        notes.append("cnnfast[triton] not run: triton is not installed")
    return names + ["cnnfast[auto]"], notes


# -------------------------------------------------------------------------------------- metadata

def git_commit() -> str:
    """`git rev-parse --short HEAD`, with "-dirty" when the checkout has uncommitted changes
    (results files excepted: writing them must not change the commit they record). A copy of the
    tree without its .git (as a lent GPU machine gets) records $CNNFAST_COMMIT, set by whoever
    copied it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("CNNFAST_COMMIT", "unknown")
    return commit + ("-dirty" if dirty else "")


def metadata(device: str) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    meta = {
        "device": device_name(device),
        "device_description": device_description(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cnnfast": cnnfast.__version__,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_threads": torch.get_num_threads(),
        "cpu_cores": _cpu_cores(),
        "python": platform.python_version(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        meta["cudnn"] = torch.backends.cudnn.version()
    return meta


class BackgroundLoad:
    """How many cores other processes kept busy during a run (Linux): every CPU figure is only as
    good as the machine was quiet, and a shared 2-core machine rarely is. Machine-wide busy time
    from /proc/stat, minus this process's and its waited-for children's."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        own = sum(os.times()[:4])
        return time.monotonic(), busy, own

    def cores_busy(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        (t0, busy0, own0), (t1, busy1, own1) = self.start, end
        return round(max((busy1 - busy0) - (own1 - own0), 0.0) / max(t1 - t0, 1e-9), 2)


# ------------------------------------------------------------------------------------ build a case

def _configure_compile() -> None:
    # Every (shape, dtype, pass) is one more compiled entry of the same function. Past dynamo's
    # default limit of 8 it would silently run eager under the "torch.compile" label: allow more,
    # and fail loudly rather than fall back.
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.fail_on_recompile_limit_hit = True


def build(case: Case, device: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], tuple]:
    """The forward function of `case`'s variant (not yet called: compilation happens on first call)
    and the parameters its backward differentiates besides the input."""
    module, function = case.setup.split(":")
    ops: Ops = getattr(importlib.import_module(module), function)(device, DTYPES[case.dtype], *case.setup_args)
    parameters = tuple(ops.parameters)
    if case.variant == "torch":
        return ops.torch, parameters
    if case.variant == "torch.checkpoint":
        return ops.checkpoint, parameters
    if case.variant == "torch.compile":
        _configure_compile()
        # dynamic=False: one specialised graph per shape, as a user with a fixed shape gets.
        return torch.compile(ops.torch, dynamic=False), parameters
    match = re.fullmatch(r"cnnfast\[(\w+)\]", case.variant)
    if not match:
        raise ValueError(f"unknown variant {case.variant!r}")
    name, fn = match.group(1), ops.cnnfast

    def forward(x):
        # The backend is chosen when the forward runs; the backward follows the forward's op.
        with cnnfast.backend(name):
            return fn(x)
    return forward, parameters


def make_input(case: Case, device: str) -> torch.Tensor:
    # Drawn on the device itself: a GPU case's input is hundreds of MB, slow to draw on a CPU.
    generator = torch.Generator(device).manual_seed(0)
    return torch.randn(case.shape, generator=generator, device=device).to(DTYPES[case.dtype])


def prepare(fn, x: torch.Tensor, backward: bool, parameters: tuple = ()) -> Callable[[], object]:
    """Calls `fn` once (the call that compiles, allocates workspaces, spins up thread pools) and
    returns one step: the forward on an input that needs no grad, or forward + backward (the
    gradients of the input and of `parameters`: a training step)."""
    if not backward:
        x = x.detach()
        with torch.no_grad():
            fn(x)
        def forward():
            with torch.no_grad():
                return fn(x)
        return forward
    x = x.detach().requires_grad_(True)
    inputs = (x, *parameters)
    y = fn(x)
    grad = torch.randn_like(y)
    torch.autograd.grad(y, inputs, grad)
    del y

    def step():
        # autograd.grad rather than .backward(): nothing accumulates into .grad between steps.
        return torch.autograd.grad(fn(x), inputs, grad)
    return step


# ------------------------------------------------------------------------------------------- time

class Timing(NamedTuple):
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int | None


def _quantile(sorted_values: list[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def time_cpu(steps: list, settings: Settings) -> list[Timing]:
    """Times the variants of one comparison round-robin, one step of each per round: on a shared
    machine, load from other processes then falls on all of them alike, not on whichever variant
    happened to run while it peaked."""
    for _ in range(settings.warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    budget = settings.budget_s * len(steps)
    start, rounds = time.perf_counter(), 0
    while rounds < settings.max_reps and (rounds < settings.min_reps or time.perf_counter() - start < budget):
        for step, samples in zip(steps, times):
            t0 = time.perf_counter()
            step()
            samples.append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    result = []
    for samples in times:
        samples.sort()
        result.append(Timing(statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8), len(samples)))
    return result


def time_cuda(step, settings: Settings) -> Timing:
    try:
        from triton.testing import do_bench
    except ImportError:
        return _time_cuda_events(step, settings)
    # do_bench repeats rep / (its estimate of one call) times: a whole-model step of 100 ms or more
    # would be timed once. Give it time for at least min_reps calls.
    torch.cuda.synchronize()
    started = time.perf_counter()
    step()
    torch.cuda.synchronize()
    one_call_ms = (time.perf_counter() - started) * 1e3
    median, p20, p80 = do_bench(step, warmup=settings.gpu_warmup_ms,
                                rep=max(settings.gpu_rep_ms, settings.min_reps * one_call_ms),
                                quantiles=[0.5, 0.2, 0.8])
    return Timing(median, p20, p80, None)  # do_bench picks its own repeat count


def _time_cuda_events(step, settings: Settings) -> Timing:
    for _ in range(max(settings.warmup, 3)):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(max(settings.min_reps, 20)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), len(times))


def copy_gbps(shape, dtype: str, settings: Settings) -> float:
    """Bandwidth of a plain device copy of one input-sized tensor (read + write), the ceiling a
    memory-bound op can hope for on this GPU."""
    src = torch.randn(shape, device="cuda").to(DTYPES[dtype])
    dst = torch.empty_like(src)
    timing = time_cuda(lambda: dst.copy_(src), settings)
    return 2 * src.numel() * src.element_size() / (timing.median_ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------------------- memory

def cuda_peak_bytes(step) -> int:
    """Peak allocation of one step above what was allocated before it (inputs, grad_output)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del result
    return peak


def rss_peak_bytes(case: Case) -> tuple[int | None, str]:
    """Peak RSS of one CPU step in a fresh process, above its RSS once the inputs exist.
    Fresh, so that no earlier case's allocations or caches blur it. Returns (bytes, how)."""
    env = dict(os.environ)
    # With a fixed threshold glibc serves every large block with mmap and gives it back on free,
    # so RSS follows the live tensors (its default raises the threshold after frees and then
    # keeps freed memory, hiding a second step's allocations).
    env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    spec = json.dumps(dataclasses.asdict(case))
    code = "import sys; from benchmarks.harness import _rss_child; _rss_child(sys.argv[1])"
    try:
        proc = subprocess.run([sys.executable, "-c", code, spec], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return None, "peak RSS: child timed out"
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"peak RSS failed: {tail}"
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer["bytes"], answer["method"]


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _proc_status_kib("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def _rss_child(spec: str) -> None:
    fields = json.loads(spec)
    case = Case(**{**fields, "shape": tuple(fields["shape"]), "setup_args": tuple(fields["setup_args"])})
    fn, parameters = build(case, "cpu")
    x = make_input(case, "cpu")
    if _reset_peak_rss():
        # Warm up first (compilation, oneDNN and OpenMP set-up are not the step's memory), then
        # measure the next step from a reset peak.
        step = prepare(fn, x, case.backward, parameters)
        gc.collect()
        _reset_peak_rss()
        base = _proc_status_kib("VmRSS")
        result = step()
        peak, method = _proc_status_kib("VmHWM"), "RSS"
    else:
        # No resettable peak: the first step's ru_maxrss (KiB on Linux), lazy set-up included.
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = prepare(fn, x, case.backward, parameters)
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss, first step"
    del result
    print(json.dumps({"bytes": max(peak - base, 0) * 1024, "method": method}))


# ---------------------------------------------------------------------------------------- measure

def _setup(case: Case, device: str, row: dict):
    """(fn, x, step) for `case`, or None with the row marked `skipped` (torch.compile failing to
    compile) or `error` (anything else): one failing variant must not stop the run."""
    try:
        fn, parameters = build(case, device)
        x = make_input(case, device)
        t0 = time.perf_counter()
        step = prepare(fn, x, case.backward, parameters)
        if case.variant == "torch.compile":
            row["notes"].append(f"compiled in {time.perf_counter() - t0:.1f} s (not timed)")
        return fn, x, step, parameters
    except Exception as error:  # noqa: BLE001
        lines = str(error).strip().splitlines()
        row["skipped" if case.variant == "torch.compile" else "error"] = f"{type(error).__name__}: {lines[0] if lines else ''}"
        return None


def measure_group(cases: list[Case], device: str, settings: Settings, copy_cache: dict) -> list[dict]:
    """Times and measures the variants of one comparison (cases sharing `Case.group`); returns
    their rows, in order."""
    rows = [{"op": c.op, "case": c.name, "shape": shape_str(c.shape), "dtype": SHORT_DTYPE[c.dtype],
             "pass": pass_str(c.backward), "variant": c.variant, "notes": []} for c in cases]
    built = [_setup(case, device, row) for case, row in zip(cases, rows)]
    live = [i for i, b in enumerate(built) if b is not None]

    steps = [built[i][2] for i in live]
    timings = [time_cuda(step, settings) for step in steps] if device == "cuda" else time_cpu(steps, settings)
    for i, timing in zip(live, timings):
        rows[i].update(median_ms=timing.median_ms, p20_ms=timing.p20_ms, p80_ms=timing.p80_ms, reps=timing.reps)

    for i in live:
        case, row, (fn, x, step, parameters) = cases[i], rows[i], built[i]
        if case.backward:  # activation memory: parameters are held whether or not autograd saves them
            _, row["saved_bytes"] = cnnfast.saved_tensor_bytes(fn, x.detach().requires_grad_(True),
                                                               exclude=parameters)
        if device == "cuda":
            row["peak_bytes"], row["peak_method"] = cuda_peak_bytes(step), "cuda max_memory_allocated"
            key = f"{shape_str(case.shape)} {SHORT_DTYPE[case.dtype]}"
            if not case.ideal_bytes:  # whole models: no traffic bound to compare with
                continue
            if key not in copy_cache:
                copy_cache[key] = copy_gbps(case.shape, case.dtype, settings)
            row["gbps"] = case.ideal_bytes / (row["median_ms"] * 1e-3) / 1e9
            row["copy_fraction"] = row["gbps"] / copy_cache[key]
    del built, steps
    gc.collect()

    if device == "cpu" and settings.rss:
        for i in live:
            if cases[i].backward:
                peak, method = rss_peak_bytes(cases[i])
                if peak is None:
                    rows[i]["notes"].append(method)
                else:
                    rows[i]["peak_bytes"], rows[i]["peak_method"] = peak, method
    return rows
