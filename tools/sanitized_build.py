#!/usr/bin/env python3
"""Builds cnnfast._C under AddressSanitizer and UndefinedBehaviorSanitizer, as a stand-in library.

The tests compare values. A kernel that reads past the end of a tensor, or of a scratch buffer,
and happens to find a harmless number there, or that writes where no test looks, passes them; on
a GPU the same access is an illegal-address fault or silent corruption. Built with
-fsanitize=address,undefined, the first such access (or signed overflow, misaligned or null
access, an out-of-range shift) stops the process with a report, and every fresh allocation starts
as NaN bytes, so an output element no kernel writes fails its test. The tests then run against it
(tests/conftest.py loads the library CNNFAST_C_LIBRARY names in place of cnnfast._C, its kernels
named by CNNFAST_C_LIBRARY_KERNELS; tests/test_sanitized_build.py, make check-sanitized).

Two builds of the same sources:
  cpu            the real library: the schemas, the composite ops and the C++ CPU kernels, with
                 setup.py's flags (OpenMP included) but -O1 and the sanitizers;
  cuda-emulated  the CUDA kernels and bindings built for the CPU (tools/cuda_emulation/build.py),
                 whose shared memory arrays and dynamic shared memory ASan then bounds too.

Python itself is not instrumented, so the sanitizer runtime must be loaded first: every process
that loads either library needs environment()'s LD_PRELOAD (libasan, then libstdc++: with libasan
alone, ASan's __cxa_throw interceptor finds nothing to forward to and fails a CHECK the first time
torch throws, during import). Building loads the library too, so this script re-runs itself
under that environment.

Usage: python tools/sanitized_build.py cpu|cuda-emulated [BUILD_DIR]   (prints the library's path)
       python tools/sanitized_build.py --environment                  (prints NAME=value words for env)
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
DEFAULT_BUILD_DIR = ROOT / "build" / "sanitized"
KINDS = ("cpu", "cuda-emulated")

# Non-recoverable: a UBSan report must fail the test run, not scroll past in its log.
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
# setup.py's C++ flags for the CPU kernels, but -O1 for readable reports and a quicker build (GCC
# vectorises loops only from -O2: the sanitized run checks the same source, not the same code).
CPU_FLAGS = ["-O1", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]


def runtime_libraries() -> list[str]:
    from torch.utils.cpp_extension import get_cxx_compiler

    def library(name: str) -> str:
        found = subprocess.run([get_cxx_compiler(), f"-print-file-name={name}"], capture_output=True, text=True,
                               check=True).stdout.strip()
        if not os.path.isabs(found):
            raise SystemExit(f"sanitized_build: the compiler has no {name} (is its sanitizer runtime installed?)")
        return found

    return [library("libasan.so"), library("libstdc++.so")]


def environment() -> dict[str, str]:
    """The variables a process that loads a sanitized library runs with."""
    return {
        "LD_PRELOAD": ":".join(runtime_libraries()),
        # Python and torch keep memory until exit by design: leak reports would be noise. Every
        # fresh allocation (each CPU tensor is one) starts as 0xFF bytes, NaN in every floating
        # type and 255 in a uint8 argmax: an output element a kernel never writes then fails its
        # test instead of keeping whatever value the memory held.
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:malloc_fill_byte=255:max_malloc_fill_size=2147483647",
        "UBSAN_OPTIONS": "print_stacktrace=1",
    }


def build(kind: str, build_dir: Path = DEFAULT_BUILD_DIR) -> Path:
    """Builds (incrementally) and returns the library's path; call it under environment()."""
    if kind == "cuda-emulated":
        sys.path.insert(0, str(ROOT / "tools" / "cuda_emulation"))
        import build as emulation

        return emulation.build(build_dir / kind, extra_cflags=tuple(SANITIZE), extra_ldflags=tuple(SANITIZE))
    if kind != "cpu":
        raise SystemExit(f"sanitized_build: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    from torch.utils import cpp_extension

    objects = build_dir / kind
    objects.mkdir(parents=True, exist_ok=True)
    sources = [CSRC / "cnnfast.cpp", *sorted((CSRC / "composite").glob("*.cpp")), *sorted((CSRC / "cpu").glob("*.cpp"))]
    cpp_extension.load(name="_C", sources=[str(s) for s in sources], build_directory=str(objects),
                       extra_cflags=CPU_FLAGS + SANITIZE, extra_ldflags=["-fopenmp", *SANITIZE],
                       is_python_module=False)
    library = objects / "_C.so"
    if not library.exists():
        raise SystemExit(f"sanitized_build: the build left no {library}")
    return library


def main(arguments: list[str]) -> None:
    if arguments == ["--environment"]:
        print(" ".join(f"{name}={value}" for name, value in environment().items()))
        return
    if len(arguments) not in (1, 2):
        raise SystemExit(__doc__)
    variables = environment()
    if os.environ.get("LD_PRELOAD") != variables["LD_PRELOAD"]:
        # Loading the built library needs the sanitizer runtime loaded before it: once.
        os.execve(sys.executable, [sys.executable, __file__, *arguments], {**os.environ, **variables})
    # The runtime is loaded now; the compiler and ninja run without it.
    for name in variables:
        os.environ.pop(name, None)
    # Only the library's path goes to stdout (the compiler's errors, if any, to stderr).
    print(build(arguments[0], Path(arguments[1]) if len(arguments) > 1 else DEFAULT_BUILD_DIR))


if __name__ == "__main__":
    main(sys.argv[1:])
