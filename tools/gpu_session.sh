#!/usr/bin/env bash
# Everything a lent GPU machine is for, as one command of the device tool (at most 10 minutes; a
# task has about 15 minutes of device time in all, machine start included, so plan on one call):
# build cnnfast._C with the CUDA kernels, run the tests that need a GPU, then the GPU benchmarks.
# The phases share one deadline, each writes its log under $OUT as it goes, and a phase that runs
# out of time is stopped with SIGINT, so that what it did still comes back: pytest prints its
# summary, the benchmarks write the comparisons they finished as a partial run.
#
#   CNNFAST_COMMIT=<commit> bash tools/gpu_session.sh [seconds] [test seconds] [benchmark arguments...]
#
# seconds (default 540) is the whole script's budget: give the device tool's timeout_s some 40 s
# more. The machine's copy of the tree has no .git: CNNFAST_COMMIT (`git rev-parse --short HEAD`
# here) is the commit the results record.
# The whole benchmark (some 320 cases, 56 of them compiled by torch.compile) is more than one call
# holds; choose the cases that matter most, e.g.
#   ... gpu_session.sh 540 150 --dtype bfloat16 --only LRN --only max-pool --only 1x1 \
#       --only DenseNet-121 --only "AlexNet (paper)"
# and the rest in a later call if time is left. A run with --only or --dtype, or one stopped by the
# deadline, writes $OUT/bench/<device>-partial.{json,md,png}; put calls' runs into benchmarks/results/ with
#   python -m benchmarks.merge <first call's files_at>/bench/*.json [<second call's>/bench/*.json]
# (the files carry device, versions, commit and date) and set cnnfast/_backend.py's
# AUTO_CUDA_CHOICE from the "auto's CUDA backend per op" lines of bench.log or the merged .md.
# $OUT holds at most seven files: env.txt, build.log, tests.log, bench.log and bench/<device>[-partial].{json,md,png}.
set -u
OUT=${OUT:-/tmp/cnnfast-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FORCE_CUDA=1
unset TRITON_INTERPRET CNNFAST_BACKEND
END=$((SECONDS + ${1:-540}))
# Seconds a phase may take: what it asks for, at most what is left before the deadline less `keep`,
# and at least 1 (`timeout 0` would mean no limit at all).
budget() {  # budget ASKED KEEP
  local left=$((END - SECONDS - $2))
  left=$(( $1 < left ? $1 : left ))
  echo $(( left > 1 ? left : 1 ))
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python3 -c "import tqdm, matplotlib, xdist; print('tqdm, matplotlib, pytest-xdist: present')"
  ninja --version >/dev/null 2>&1 && echo "ninja $(ninja --version)" ||
    echo "no ninja: the build compiles one file at a time"
  echo "commit ${CNNFAST_COMMIT:-unknown (set CNNFAST_COMMIT)}"; } >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

start=$SECONDS
if ! timeout -s INT -k 10 "$(budget 300 200)" python3 -m pip install -q --no-build-isolation --no-deps -e . \
    >"$OUT/build.log" 2>&1; then
  echo "build failed or ran out of time (see build.log):"; tail -40 "$OUT/build.log"; exit 1
fi
python3 -c "import cnnfast; assert cnnfast.cuda_kernels_built(), 'CUDA kernels not built'" || exit 1
echo "built in $((SECONDS - start)) s"

# The tests whose ids name a CUDA backend ("cuda", "triton-cuda") and the opchecks (on CUDA tensors
# where a GPU exists), spread over the machine's cores. The nvcc sm_90 check is left out: the build
# just compiled the same kernels, and so are the CUDA kernels run on the CPU (test_cuda_emulation.py),
# which the GPU itself now runs. -v logs each test as it ends, so a stopped run still says which ran.
start=$SECONDS
timeout -s INT -k 15 "$(budget "${2:-150}" 150)" python3 -m pytest -v -n 8 --tb=short -rfE \
    -p no:cacheprovider -k "(cuda or opcheck) and not compile_for_sm90 and not test_cuda_emulation" tests >"$OUT/tests.log" 2>&1
echo "tests: exit $? in $((SECONDS - start)) s; $(tail -1 "$OUT/tests.log")"

# Whole models without their torch.compile twins: ten compilations of minutes each do not fit a call.
# The benchmark starts no comparison after --time-limit, and SIGINT stops the one running at the deadline.
start=$SECONDS
limit=$(budget 100000 15)
timeout -s INT -k 20 "$limit" python3 -m benchmarks --no-model-compile --time-limit $((limit > 60 ? limit - 60 : 0)) \
    --out "$OUT/bench" "${@:3}" >"$OUT/bench.log" 2>&1
echo "benchmarks: exit $? in $((SECONDS - start)) s"
sed -n '/^Targets:/,$p' "$OUT/bench.log"
