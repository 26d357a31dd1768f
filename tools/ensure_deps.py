"""Installs what cnnfast needs to build, test and benchmark, and only what is missing.

torch is pinned to 2.13.0 (this project's CPU machines serve it as a CPU build from a local
wheel; from PyPI on Linux it would be the CUDA build) unless a torch is already installed (a CUDA
machine keeps its own); triton is pinned to the GPU machines' version; the
Triton interpreter needs numpy < 2.4, which is enforced only where the interpreter is used (no GPU).
Nothing is installed when everything is present (GPU machines have no network).
"""
from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys

from packaging.version import Version

TORCH = "torch==2.13.0"
TRITON = "triton==3.6.0"
PLAIN = ["pybind11", "ninja", "pytest", "tqdm", "matplotlib", "setuptools", "wheel"]


def installed(name: str) -> Version | None:
    try:
        return Version(metadata.version(name))
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    wanted = []
    if installed("torch") is None:
        wanted.append(TORCH)
    if installed("triton") is None:
        wanted.append(TRITON)
    wanted += [name for name in PLAIN if installed(name) is None]
    if wanted:
        # torch is installed first and alone, so nothing else can pull a CUDA build of it.
        first = [w for w in wanted if w.startswith("torch")]
        for group in (first, [w for w in wanted if not w.startswith("torch")]):
            if group:
                print("ensure_deps: installing", " ".join(group), flush=True)
                subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *group])
    import torch  # noqa: E402  (installed above if it was missing)

    numpy = installed("numpy")
    if not torch.cuda.is_available() and (numpy is None or numpy >= Version("2.4")):
        print("ensure_deps: installing numpy<2.4 for the Triton interpreter", flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "numpy<2.4"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
