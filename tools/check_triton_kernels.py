#!/usr/bin/env python3
"""Compile check of the Triton kernels for sm_90, for machines without a GPU (CI, `make check-triton`).

The tests run the Triton kernels under TRITON_INTERPRET=1, which never compiles them: a kernel
that Triton's compiler rejects for a GPU (a type error in the lowering, a tile that needs more
shared memory than an H100/H200 has, registers spilled to local memory) would pass every test
here. So:

1. In a child process under the interpreter, every cnnfast op that launches a Triton kernel runs
   on small CPU tensors in every dtype and layout it takes, and each launch is recorded: the
   kernel, its argument types (annotated scalars as annotated), its constexpr values (as a GPU
   launch passes them: the launchers are told they are not interpreted) and its compile options.
2. Here, without the interpreter, each distinct launch is compiled with triton.compile for sm_90
   (as the GPU would compile it), its shared memory is checked against the SM's, and ptxas -v
   tells its registers and spills. Each launch is compiled a second time with its int32 arguments
   widened to int64, to show that it compiles: Triton specialises an integer argument of 2**31 or
   more (sizes and strides of tensors past 2**31 elements) as int64, which the small tensors
   recorded here never reach. Registers and spills are reported for the recorded launches only:
   widening every argument at once is a worst case no real launch makes (a kernel that guards its
   sizes, as the 1x1 convolution's does, never sees most of them as int64).

Prints one line per kernel; exits 0 when every launch compiled within the shared-memory limit, 1
otherwise.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This checkout's cnnfast and triton_kernels, also where cnnfast is not installed (both processes).
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
CAPABILITY = 90  # H100 / H200
SHARED_MEMORY_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90
TORCH_TO_TRITON = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "uint8": "u8",
                   "int8": "i8", "int32": "i32", "int64": "i64", "bool": "i1"}


# ---- step 1: record the launches (child process, TRITON_INTERPRET=1) ---------------------------

def _argument_type(value, annotation=inspect.Parameter.empty) -> str:
    """The type of one (non-constexpr) launch argument, as Triton's JIT would specialise it: an
    annotated one (`beta: tl.float64`) as its annotation says, whatever the Python value."""
    import torch
    import triton.language as tl
    if isinstance(annotation, str) and annotation.startswith("tl."):
        annotation = getattr(tl, annotation[3:], annotation)
    if isinstance(annotation, tl.dtype):
        return annotation.name
    if isinstance(value, torch.Tensor):
        return "*" + TORCH_TO_TRITON[str(value.dtype).removeprefix("torch.")]
    if value is None:
        return "constexpr"
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unexpected launch argument {value!r}")


def _constant(value):
    """A constexpr value in JSON: Triton dtypes by name."""
    import triton.language as tl
    if isinstance(value, tl.dtype):
        return {"triton_dtype": value.name}
    return value.value if isinstance(value, tl.constexpr) else value


def _launch_record(interpreted, args, kwargs) -> dict:
    fn = interpreted.fn
    parameters = list(inspect.signature(fn).parameters.values())
    names = [p.name for p in parameters]
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    signature, constexprs = {}, {}
    for parameter in parameters:
        value = bound.get(parameter.name, parameter.default)
        if "constexpr" in str(parameter.annotation):
            signature[parameter.name] = "constexpr"
            constexprs[parameter.name] = _constant(value)
        else:
            signature[parameter.name] = _argument_type(value, parameter.annotation)
            if value is None:
                constexprs[parameter.name] = None
    options = {k: v for k, v in kwargs.items() if k not in names}
    return {"module": fn.__module__, "kernel": fn.__name__, "signature": signature, "constexprs": constexprs,
            "options": options}


def _run_every_triton_op() -> None:
    """Each op of the 'triton' backend, forward and backward, in each dtype and layout it takes."""
    import torch

    import cnnfast
    import cnnfast.functional as F

    torch.manual_seed(0)
    layouts = (torch.contiguous_format, torch.channels_last)
    with cnnfast.backend("triton"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            for layout in layouts:
                def leaf(*shape):
                    return torch.randn(*shape).to(dtype=dtype, memory_format=layout).requires_grad_()
                # Even and odd sizes; beta 0.75, 0.5 and 0 (their own code paths) and the general power.
                for size, beta in ((4, 0.75), (5, 0.75), (5, 0.5), (5, 0.0), (5, 1.3)):
                    F.local_response_norm(leaf(2, 7, 5, 6), size, beta=beta).sum().backward()
                # 3/2 windows (the fast path), other windows, and windows too large for uint8 offsets.
                for kernel, stride in ((3, 2), (2, 1), (17, 1)):
                    F.max_pool2d(leaf(2, 3, 19, 19), kernel, stride).sum().backward()
                    # The fused ReLU-LRN-max-pool; on the 3/2 window also an even size and the general pow.
                    for size, beta in ((5, 0.75), (4, 1.3))[:2 if kernel == 3 else 1]:
                        F.relu_lrn_max_pool2d(leaf(2, 6, 19, 19), size, beta=beta, kernel_size=kernel,
                                              stride=stride).sum().backward()
                # BatchNorm's affine parameters: fp32 for the half types (as under autocast), else the input's.
                stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32

                def parameter(make):
                    return make(8, dtype=stats_dtype).requires_grad_()
                x = leaf(2, 8, 5, 6)
                F.bn_relu(x, torch.rand(8, dtype=dtype).requires_grad_(),
                          torch.randn(8, dtype=dtype).requires_grad_()).sum().backward()
                # BN-add-ReLU: the same kernels with the residual, and its gradient, switched on.
                for identity in (leaf(2, 8, 5, 6), None):
                    F.bn_add_relu(leaf(2, 8, 5, 6), identity, None, None, parameter(torch.rand),
                                  parameter(torch.randn), training=True).sum().backward()
                for kernel_size in (1, 3):
                    weight = torch.randn(4, 8, kernel_size, kernel_size, dtype=dtype, requires_grad=True)
                    for bias in (None, torch.randn(4, dtype=dtype, requires_grad=True)):
                        F.bn_relu_conv2d(x, None, None, parameter(torch.rand), parameter(torch.randn), weight, bias,
                                         padding=kernel_size // 2, training=True).sum().backward()


def record(out: Path) -> None:
    from triton.runtime.interpreter import InterpretedFunction

    launches = {}
    run = InterpretedFunction.run

    # The launchers choose a few constexprs otherwise under the interpreter (its bfloat16 is raw
    # 16-bit words; libdevice does not run there; each such module says so in its _INTERPRETED):
    # record the launches as a GPU makes them. Only their types matter here, not the numbers the
    # interpreter then computes; a GPU-only constexpr value runs as its INTERPRETER_STAND_INS says.
    import cnnfast.triton_kernels as kernels
    stand_ins = {}
    for path in Path(kernels.__file__).parent.glob("[!_]*.py"):
        module = importlib.import_module(f"{kernels.__name__}.{path.stem}")
        if hasattr(module, "_INTERPRETED"):
            module._INTERPRETED = False
        for name, values in getattr(module, "INTERPRETER_STAND_INS", {}).items():
            stand_ins.setdefault(name, {}).update(values)

    def recording_run(self, *args, grid, warmup, **kwargs):
        entry = _launch_record(self, args, kwargs)
        launches[json.dumps(entry, sort_keys=True)] = entry
        runnable = {name: stand_ins.get(name, {}).get(value, value) if isinstance(value, int) else value
                    for name, value in kwargs.items()}
        return run(self, *args, grid=grid, warmup=warmup, **runnable)

    InterpretedFunction.run = recording_run
    _run_every_triton_op()
    out.write_text(json.dumps(list(launches.values()), indent=1))


# ---- step 2: compile each launch for sm_90 (this process, no interpreter) ---------------------

def _jit_function(module: str, name: str):
    from triton.runtime.jit import JITFunction
    kernel = getattr(importlib.import_module(module), name)
    while not isinstance(kernel, JITFunction):  # through triton.heuristics / autotune wrappers
        kernel = kernel.fn
    return kernel


def _ptxas_report(ptx: str) -> tuple[int, int]:
    """(registers, spill bytes) of the compiled kernel, from ptxas -v."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        log = subprocess.run([get_ptxas(CAPABILITY).path, "-v", f"--gpu-name={sm_arch_from_capability(CAPABILITY)}",
                              str(source), "-o", str(Path(tmp) / "kernel.cubin")],
                             capture_output=True, text=True, check=True).stderr
    registers = max((int(n) for n in re.findall(r"Used (\d+) registers", log)), default=0)
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return registers, spills


def compile_launch(entry: dict) -> tuple[int, int, int]:
    """Compiles one recorded launch for sm_90: (shared bytes, registers, spill bytes)."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    constexprs = {name: tl.dtype(value["triton_dtype"]) if isinstance(value, dict) else value
                  for name, value in entry["constexprs"].items()}
    source = triton.compiler.ASTSource(fn=_jit_function(entry["module"], entry["kernel"]),
                                       signature=entry["signature"], constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", CAPABILITY, 32), options=entry["options"])
    registers, spills = _ptxas_report(compiled.asm["ptx"])
    return compiled.metadata.shared, registers, spills


def _widened(entry: dict) -> dict | None:
    """The launch as a tensor past 2**31 elements makes it: every int32 argument int64 (None when it has none)."""
    if "i32" not in entry["signature"].values():
        return None
    return dict(entry, signature={name: "i64" if kind == "i32" else kind for name, kind in entry["signature"].items()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)  # step 1, in the child process
    args = parser.parse_args()
    if args.record:
        record(args.record)
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("check_triton_kernels: run without TRITON_INTERPRET=1 (it compiles; the child interprets)")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        launches_file = Path(tmp) / "launches.json"
        child = subprocess.run([sys.executable, __file__, "--record", str(launches_file)], cwd=ROOT,
                               env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True)
        if child.returncode != 0:
            print(f"FAILED  recording the launches under the interpreter:\n{child.stdout}{child.stderr}")
            return 1
        launches = json.loads(launches_file.read_text())
    by_kernel: dict[str, list[dict]] = {}
    for entry in launches:
        by_kernel.setdefault(f"{entry['module']}.{entry['kernel']}", []).append(entry)
    failed = False
    for kernel, entries in sorted(by_kernel.items()):
        widened = []
        for entry in map(_widened, entries):
            if entry is not None and entry not in widened:  # two small launches may widen to the same one
                widened.append(entry)
        try:
            results = [compile_launch(entry) for entry in entries]
            shared_widened = max((compile_launch(entry)[0] for entry in widened), default=0)
        except Exception as error:  # the compiler's own message is what the reader needs
            print(f"FAILED  {kernel}: {type(error).__name__}: {error}")
            failed = True
            continue
        shared = max([r[0] for r in results] + [shared_widened])
        registers = max(r[1] for r in results)
        spilling = [r[2] for r in results if r[2]]
        # Spills are reported, not failed: Triton, not cnnfast, allocates the registers, and a few
        # bytes (around libdevice calls) cost nothing measurable; a GPU benchmark judges them.
        spills = f"{len(spilling)} spill (at most {max(spilling)} bytes)" if spilling else "none spills"
        ok = shared <= SHARED_MEMORY_LIMIT
        failed |= not ok
        print(f"{'ok     ' if ok else 'FAILED '} {kernel}: {len(entries)} launch variants for sm_{CAPABILITY} "
              f"(and {len(widened)} with int64 sizes), "
              f"at most {shared / 1024:.1f} KiB shared (limit {SHARED_MEMORY_LIMIT // 1024}) and "
              f"{registers} registers; {spills}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
