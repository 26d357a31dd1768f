#!/usr/bin/env bash
# Everything a lent GPU machine is for, as one command of the device tool (at most 10 minutes; a
# task has 15 minutes of device time in all, start included): build cnnfast._C with the CUDA
# kernels, run the tests that need a GPU, then the GPU benchmarks. Each phase is time-boxed and
# writes its log under $OUT as it goes, so what a phase that ran out of time wrote still comes back.
#
#   bash tools/gpu_session.sh [test seconds] [benchmark seconds] [python -m benchmarks arguments...]
#
# The whole benchmark is more than a call holds on a GPU (some 260 cases, 56 of them compiled by
# torch.compile): choose, e.g. with timeout_s=600
#   bash tools/gpu_session.sh 120 330 --dtype bfloat16 --only LRN --only max-pool --only 1x1 --only DenseNet-121 --only "AlexNet (paper)"
# and the rest in a second call if time is left. A run with --only or --dtype writes
# $OUT/bench/<device>-partial.{json,md,png}; put the calls' runs into benchmarks/results/ with
#   python -m benchmarks.merge <first call's files_at>/bench/*.json <second call's>/bench/*.json
# (the files carry device, versions, commit and date) and set cnnfast/_backend.py's
# AUTO_CUDA_CHOICE from the "auto's CUDA backend per op" lines of bench.log or the merged .md.
# $OUT holds at most seven files: env.txt, build.log, tests.log, bench.log and bench/<device>[-partial].{json,md,png}.
set -u
OUT=${OUT:-/tmp/cnnfast-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FORCE_CUDA=1
unset TRITON_INTERPRET CNNFAST_BACKEND

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  git log -1 --format='commit %h %cI' 2>/dev/null; } >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

start=$SECONDS
if ! timeout 300 python3 -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  echo "build failed or ran out of time (see build.log):"; tail -40 "$OUT/build.log"; exit 1
fi
python3 -c "import cnnfast; assert cnnfast.cuda_kernels_built(), 'CUDA kernels not built'" || exit 1
echo "built in $((SECONDS - start)) s"

# The tests whose ids name a CUDA backend ("cuda", "triton-cuda") and the kernel compile checks,
# spread over the machine's cores (pytest-xdist is in the image).
start=$SECONDS
timeout "${1:-150}" python3 -m pytest -q -n 8 -k "cuda" tests >"$OUT/tests.log" 2>&1
echo "tests: exit $? in $((SECONDS - start)) s; $(tail -1 "$OUT/tests.log")"

start=$SECONDS
# Whole models without their torch.compile twins: ten compilations of minutes each do not fit a call.
timeout "${2:-300}" python3 -m benchmarks --no-model-compile --out "$OUT/bench" "${@:3}" >"$OUT/bench.log" 2>&1
echo "benchmarks: exit $? in $((SECONDS - start)) s"
sed -n '/^Targets:/,$p' "$OUT/bench.log"
