# The two commands of the README: `make bench` (the main job) and `make test`.
# Both install what is missing, build cnnfast._C against the installed torch, then run.
PYTHON ?= python3
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps build test bench check-cuda check-cuda-emulated check-sanitized check-triton clean

all: test

deps:
	$(PYTHON) -m pip --version >/dev/null 2>&1 || $(PYTHON) -m ensurepip --upgrade
	$(PYTHON) -m pip install -q packaging
	$(PYTHON) tools/ensure_deps.py

# Editable, so that the tests and benchmarks, run from this directory, import the built _C.
build: deps
	MAX_JOBS=$(MAX_JOBS) $(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .

test: build
	$(PYTHON) -m pytest -q tests

bench: build
	$(PYTHON) -m benchmarks

# Compiles every torch-free CUDA kernel with nvcc -arch=sm_90 (also run by the tests).
check-cuda:
	$(PYTHON) tools/check_cuda_kernels.py

# Runs the CUDA kernels and bindings on the CPU: the cpp-cpu tests against them, built for the CPU
# with an emulated CUDA runtime (tools/cuda_emulation; also run by the tests).
check-cuda-emulated: build
	library=$$($(PYTHON) tools/cuda_emulation/build.py) && CNNFAST_C_LIBRARY=$$library \
		CNNFAST_C_LIBRARY_KERNELS=cuda-emulated $(PYTHON) -m pytest -q -p no:cacheprovider --capture=sys -k cpp-cpu tests

# The cpp-cpu tests against the CPU kernels, then the CUDA kernels built for the CPU, both built under
# AddressSanitizer and UBSan (tools/sanitized_build.py; also run by the tests).
check-sanitized: build
	for kind in cpu cuda-emulated; do \
		library=$$($(PYTHON) tools/sanitized_build.py $$kind) && env $$($(PYTHON) tools/sanitized_build.py --environment) \
			CNNFAST_C_LIBRARY=$$library CNNFAST_C_LIBRARY_KERNELS=$$kind \
			$(PYTHON) -m pytest -q -p no:cacheprovider --capture=sys -k cpp-cpu tests \
			|| exit 1; \
	done

# Compiles every Triton kernel, as the tests launch it, for sm_90 (also run by the tests).
check-triton: build
	env -u TRITON_INTERPRET $(PYTHON) tools/check_triton_kernels.py

clean:
	rm -rf build *.egg-info cnnfast/_C*.so
