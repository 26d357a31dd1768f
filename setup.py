"""Builds cnnfast._C against the torch that is installed (use `pip install --no-build-isolation .`).

Environment:
  FORCE_CUDA=1           build the CUDA kernels even where torch reports no CUDA
  CNNFAST_CUDA=0         never build the CUDA kernels
  TORCH_CUDA_ARCH_LIST   GPU architectures (default "9.0", i.e. sm_90 for H100/H200)
  MAX_JOBS               parallel compile jobs (ninja)
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_cuda():
    if os.environ.get("CNNFAST_CUDA") == "0":
        return False, "CNNFAST_CUDA=0"
    if os.environ.get("FORCE_CUDA") == "1":
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} has no CUDA"
    if CUDA_HOME is None:
        return False, "nvcc not found"
    return True, f"torch {torch.__version__} with CUDA {torch.version.cuda}, nvcc in {CUDA_HOME}"


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def extension():
    with_cuda, why = build_cuda()
    cpp = ["csrc/cnnfast.cpp"] + sources("csrc/composite/*.cpp") + sources("csrc/cpu/*.cpp")
    # -fopenmp makes at::parallel_for (inlined from ATen's headers) run in parallel;
    # -fno-math-errno lets sqrt vectorise (the kernels never read errno); -fno-trapping-math lets
    # comparisons of doubles (the ReLU mask) become vector selects (the kernels never read FP
    # exception flags).
    cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        cu = sources("csrc/cuda/*.cu")
        print(f"cnnfast: building the C++ CPU kernels and the CUDA kernels ({why}; "
              f"arch {os.environ['TORCH_CUDA_ARCH_LIST']}): {len(cpp) + len(cu)} files")
        return CUDAExtension(
            "cnnfast._C", cpp + cu,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    print(f"cnnfast: building the C++ CPU kernels only ({why}): {len(cpp)} files")
    return CppExtension("cnnfast._C", cpp, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"])


setup(
    name="cnnfast",
    version="0.1.0",
    description="Fast, memory-lean CNN kernels for PyTorch",
    # The packages (and where triton_kernels/ installs) are listed once, in pyproject.toml.
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
)
