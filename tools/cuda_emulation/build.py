#!/usr/bin/env python3
"""Builds cnnfast's CUDA kernels and bindings for the CPU, as a stand-in `cnnfast._C`.

The real `_C` registers the C++ CPU kernels (csrc/cpu/) for CPU tensors. This one registers the
CUDA bindings (csrc/cuda/*.cu, the very files setup.py compiles with nvcc) for CPU tensors
instead, compiled by the host compiler against the emulated CUDA runtime in include/ (blocks one
after another, a block's threads as fibers, real barriers: cuda_emulation.h). Everything else is
the real `_C`'s: the schemas (csrc/cnnfast.cpp) and the device-agnostic ops (csrc/composite/),
with the CUDA rule for BatchNorm's accumulation type (CNNFAST_CUDA_EMULATION: fp32 for fp32
inputs; csrc/op_helpers.h).
Loaded in place of `cnnfast._C` (tests/conftest.py does it when CNNFAST_C_LIBRARY names the built
file and CNNFAST_C_LIBRARY_KERNELS is `cuda-emulated`), the CPU tests then run the CUDA kernels:
their arithmetic, indexing, grid walks and block reductions, on a machine without a GPU
(tests/test_cuda_emulation.py).

The sources are copied and rewritten, never edited in place: a launch `kernel<<<grid, block,
shared, stream>>>(args)` becomes `::cuda_emulation::launch([](auto... a) { kernel(a...); }, grid,
block, shared, stream)(args)`, a `__shared__` array a static pointer to storage the runtime
allocates and poisons per block (a dynamic `extern __shared__` one a pointer to the block's
emulated buffer), the CUDA registrations CPU ones, and the bindings' CUDA-tensor check a
CPU-tensor check. Each rewrite must apply where it is expected, so a change to the sources that
escapes one fails the build rather than quietly testing less.

Usage: python tools/cuda_emulation/build.py [BUILD_DIR]   (prints the built library's path)
Run it in its own process: building also loads the library, which registers the cnnfast ops, and
a process that has loaded the real cnnfast._C cannot register them twice.
"""
from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
INCLUDE = Path(__file__).resolve().parent / "include"
DEFAULT_BUILD_DIR = ROOT / "build" / "cuda_emulation"

LAUNCH_OPEN, LAUNCH_CLOSE = "<<<", ">>>"
EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\((?:[^()]|\([^()]*\))*\)\s+)?unsigned\s+char\s+(\w+)\s*\[\s*\]\s*;")
STATIC_SHARED = re.compile(r"__shared__\s+([\w:<>, ]+?)\s+(\w+)\s*\[([^\]]+)\]\s*;")
CUDA_REGISTRATION = "TORCH_LIBRARY_IMPL(cnnfast, CUDA, m)"
CUDA_TENSOR_CHECK = "t.is_cuda()"


def kernel_expression_start(text: str, end: int) -> int:
    """Start of the kernel expression (`detail::name<T, true>`) that ends just before `end`."""
    i = end
    while i > 0 and text[i - 1].isspace():
        i -= 1
    while i > 0:
        c = text[i - 1]
        if c == ">":  # a template argument list: skip back to its balancing '<'
            depth = 0
            while i > 0:
                i -= 1
                depth += {">": 1, "<": -1}.get(text[i], 0)
                if depth == 0:
                    break
        elif c.isalnum() or c in "_:":
            i -= 1
        else:
            break
    return i


def rewrite_launches(text: str) -> tuple[str, int]:
    out, count, position = [], 0, 0
    while (open_at := text.find(LAUNCH_OPEN, position)) >= 0:
        close_at = text.index(LAUNCH_CLOSE, open_at)
        start = kernel_expression_start(text, open_at)
        kernel = text[start:open_at].strip()
        if not kernel:
            raise SystemExit(f"cuda_emulation: no kernel name before a launch at offset {open_at}")
        configuration = text[open_at + len(LAUNCH_OPEN):close_at]
        out.append(text[position:start])
        out.append(f"::cuda_emulation::launch([](auto... a) {{ {kernel}(a...); }}, {configuration})")
        position = close_at + len(LAUNCH_CLOSE)
        count += 1
    out.append(text[position:])
    return "".join(out), count


def replace_expected(text: str, old: str, new: str, name: str) -> str:
    if old not in text:
        raise SystemExit(f"cuda_emulation: {name} no longer contains {old!r}; update build.py")
    return text.replace(old, new)


def rewrite_cuda_syntax(text: str, name: str) -> tuple[str, int]:
    """The launches and dynamic shared arrays of CUDA source `text`, as C++; and the launch count."""
    text, launches = rewrite_launches(text)
    text = EXTERN_SHARED.sub(r"unsigned char* const \1 = ::cuda_emulation::dynamic_shared_memory();", text)
    # A static array: storage of its own from the runtime (blocks run one at a time), poisoned per block.
    text = STATIC_SHARED.sub(r"static \1* const \2 = ::cuda_emulation::shared_array<\1>(\3);", text)
    if "__shared__" in text:
        raise SystemExit(f"cuda_emulation: a __shared__ array in {name} has a new form; update build.py")
    return text, launches


def rewrite(path: Path) -> str:
    text, launches = rewrite_cuda_syntax(path.read_text(), path.name)
    if path.name.endswith("_kernels.cuh") and launches == 0:
        raise SystemExit(f"cuda_emulation: {path.name} launches no kernel with <<<...>>>; update build.py")
    if path.suffix == ".cu":
        text = replace_expected(text, CUDA_REGISTRATION, "TORCH_LIBRARY_IMPL(cnnfast, CPU, m)", path.name)
    if path.name == "binding_helpers.cuh":
        text = replace_expected(text, CUDA_TENSOR_CHECK, "t.is_cpu()", path.name)
    return text


def prepare_sources(build_dir: Path) -> list[Path]:
    source = build_dir / "csrc"
    if source.exists():
        shutil.rmtree(source)
    shutil.copytree(CSRC, source, ignore=shutil.ignore_patterns("cpu"))
    bindings = []
    for path in sorted((CSRC / "cuda").iterdir()):
        if path.suffix not in (".cu", ".cuh"):
            continue
        text = rewrite(path)
        if path.suffix == ".cuh":
            (source / "cuda" / path.name).write_text(text)
        else:
            # A .cpp beside its headers, which the host compiler takes as C++.
            binding = source / "cuda" / f"{path.stem}_emulated.cpp"
            binding.write_text(text)
            bindings.append(binding)
    return [source / "cnnfast.cpp", *sorted((source / "composite").glob("*.cpp")), *bindings]


def build(build_dir: Path = DEFAULT_BUILD_DIR, verbose: bool = False, extra_cflags: tuple[str, ...] = (),
          extra_ldflags: tuple[str, ...] = ()) -> Path:
    """Builds (incrementally: ninja skips unchanged files) and returns the library's path.

    The extra flags are tools/sanitized_build.py's (the same kernels under the sanitizers)."""
    from torch.utils import cpp_extension

    build_dir.mkdir(parents=True, exist_ok=True)
    sources = prepare_sources(build_dir)
    objects = build_dir / "objects"
    objects.mkdir(exist_ok=True)
    cpp_extension.load(
        name="_C", sources=[str(s) for s in sources], build_directory=str(objects),
        # The emulated CUDA headers come before torch's, which a CPU build of torch half lacks.
        extra_cflags=[f"-I{INCLUDE}", "-O1", "-DCNNFAST_CUDA_EMULATION", *extra_cflags],
        extra_ldflags=list(extra_ldflags), is_python_module=False, verbose=verbose)
    library = objects / "_C.so"
    if not library.exists():
        raise SystemExit(f"cuda_emulation: the build left no {library}")
    return library


def build_self_test(build_dir: Path = DEFAULT_BUILD_DIR) -> Path:
    """Compiles self_test.cpp, the emulated runtime's own checks, and returns the program's path."""
    import subprocess

    from torch.utils.cpp_extension import get_cxx_compiler

    build_dir.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).resolve().parent / "self_test.cpp"
    text, _ = rewrite_cuda_syntax(source.read_text(), source.name)
    rewritten = build_dir / "self_test.cpp"
    rewritten.write_text(text)
    program = build_dir / "self_test"
    subprocess.run([get_cxx_compiler(), "-std=c++17", "-O1", f"-I{INCLUDE}", str(rewritten), "-o", str(program)],
                   check=True, capture_output=True, text=True)
    return program


if __name__ == "__main__":
    # Only the library's path goes to stdout (the compiler's errors, if any, to stderr).
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_BUILD_DIR))
