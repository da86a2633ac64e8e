#!/usr/bin/env bash
# One call on a machine with a CUDA GPU: the GPU tests (every op's compiled Triton kernels against
# the float64 torch twin, the fused and batched meta-steps against the per-task reference loop, the
# CUDA graph), then the meta-step table (launches, ms, peak memory: loop / batched / fused / graph).
#
#   bash scripts/gpu_check.sh                 quick: the GPU-specific checks and the table
#   FULL=1 bash scripts/gpu_check.sh          also the whole test suite and the CPU benchmarks
#
# Python: if `python3` already has torch with CUDA (an offline GPU image), it is used as is and the
# package runs from this tree (PYTHONPATH; the C++ extension is built only with FULL=1); otherwise a
# venv (VENV, default .gpu-venv) gets torch and the package from PyPI. Logs go to LOG (default
# gpu_check_logs/). Each step has a time limit (STEP_TIMEOUT, seconds); every step runs, the summary
# lists them all, and the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${LOG:-gpu_check_logs}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
declare -a NAMES RCS

step() {             # step NAME CMD...: run with a time limit, tee to $LOG/NAME.log, record the status
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    timeout "$STEP_TIMEOUT" "$@" 2>&1 | tee "$LOG/$name.log"
    local rc=${PIPESTATUS[0]}
    NAMES+=("$name ($((SECONDS - t0)) s)"); RCS+=("$rc")
    return 0
}

PY=python3
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    if [ "${FULL:-0}" = 1 ]; then
        step build python3 -m pip install --quiet --no-build-isolation --no-deps -e .
    fi
else
    VENV=${VENV:-.gpu-venv}
    python3 -m venv "$VENV" && . "$VENV/bin/activate"
    PY=python
    step install python -m pip install --quiet torch -e ".[test,triton]"
fi
XDIST=()
$PY -c "import xdist" 2>/dev/null && XDIST=(-n "${WORKERS:-8}")

step gpu-info $PY -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA'; \
print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
step ops-available $PY -c "import macaw_fast.ops as o; r = o.available(); print(r); assert r['triton_cuda'] is True"
step meta-step-gpu $PY -m pytest -q -rs tests/test_meta_step_cuda.py tests/test_cuda_graph.py
step meta-step-table $PY bench/bench_ops.py --cuda-meta-step --markdown "$LOG/cuda_meta_step.md"
step ops-gpu $PY -m pytest -q -rs "${XDIST[@]}" tests/test_ops_device.py
if [ "${FULL:-0}" = 1 ]; then
    step tests $PY -m pytest -q "${XDIST[@]}" tests
    step bench $PY -m pytest -q bench/ --benchmark-only
fi

echo
echo "=== summary (logs in $LOG/)"
fail=0
for i in "${!NAMES[@]}"; do
    if [ "${RCS[$i]}" = 0 ]; then s=ok; else s="FAILED (rc ${RCS[$i]})"; fail=1; fi
    printf '  %-40s %s\n' "${NAMES[$i]}" "$s"
done
for f in meta-step-gpu ops-gpu tests bench; do
    [ -f "$LOG/$f.log" ] && printf '  %-14s %s\n' "$f:" "$(grep -E '(passed|failed|error)' "$LOG/$f.log" | tail -1)"
done
[ -f "$LOG/cuda_meta_step.md" ] && cat "$LOG/cuda_meta_step.md"
exit $fail
