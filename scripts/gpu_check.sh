#!/usr/bin/env bash
# One call on a machine with a CUDA GPU: install, run every test (GPU-marked ones included), the
# benchmarks, the launch counts with real Triton launches, and print a summary.
#   bash scripts/gpu_check.sh            (uses ./.gpu-venv; VENV=... to choose; SKIP_INSTALL=1 to reuse)
# Exits non-zero if any step failed; every step runs regardless, and the summary lists them all.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.gpu-venv}
LOG=${LOG:-gpu_check_logs}
mkdir -p "$LOG"
declare -a NAMES RCS

step() {             # step NAME CMD...: run, tee to $LOG/NAME.log, record the exit status
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    "$@" 2>&1 | tee "$LOG/$name.log"
    local rc=${PIPESTATUS[0]}
    NAMES+=("$name ($((SECONDS - t0)) s)"); RCS+=("$rc")
    return 0
}

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    python3 -m venv "$VENV"
    . "$VENV/bin/activate"
    step pip-upgrade python -m pip install --quiet --upgrade pip
    step install-torch python -m pip install --quiet torch
    step install-package python -m pip install --quiet -e ".[test,triton]"
else
    . "$VENV/bin/activate"
fi
step gpu-info python -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA'; \
print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
step ops-available python -c "import macaw_fast.ops as o; print(o.available())"
# Every test; on a GPU machine the fused tests run the Triton kernels for real and the gpu-marked
# ones (CUDA graph) run instead of skipping.
step tests python -m pytest -q tests
step tests-gpu python -m pytest -q -m gpu -rs tests
step tests-triton-interpreted env TRITON_INTERPRET=1 python -m pytest -q -m triton tests
step bench python -m pytest -q bench/ --benchmark-only
step launches-cuda python bench/bench_ops.py --cuda-meta-step --markdown "$LOG/cuda_meta_step.md"
step launches-interpreted env TRITON_INTERPRET=1 python bench/count_launches.py

echo
echo "=== summary (logs in $LOG/)"
fail=0
for i in "${!NAMES[@]}"; do
    if [ "${RCS[$i]}" = 0 ]; then s=ok; else s="FAILED (rc ${RCS[$i]})"; fail=1; fi
    printf '  %-40s %s\n' "${NAMES[$i]}" "$s"
done
for f in tests tests-gpu bench; do
    [ -f "$LOG/$f.log" ] && printf '  %-12s %s\n' "$f:" "$(grep -E '(passed|failed|error)' "$LOG/$f.log" | tail -1)"
done
[ -f "$LOG/cuda_meta_step.md" ] && cat "$LOG/cuda_meta_step.md"
exit $fail
