#!/usr/bin/env bash
# The real collection loop, float32 against bfloat16 SAC products (BENCHMARKS.md, Session 13):
# 3,000 steps of all 50 Ant-Dir tasks (1,000 updates), 2 threads, alternating, REPS times each.
# Stop other jobs first (the numbers are for idle cores). Prints the wall time of each run; the
# in-loop split (update / outside) is in each run's checkpoint (time_update, time_total).
#   bash bench/collect_matmul_inloop.sh [REPS] [OUTDIR]
set -u
M=${MACAW_FAST:-macaw-fast}
REPS=${1:-2}; OUT=${2:-/tmp/collect_matmul}
for rep in $(seq "$REPS"); do
  for mm in float32 bfloat16; do
    rm -rf "$OUT/$mm"; mkdir -p "$OUT"
    t0=$(date +%s.%N)
    $M collect --env ant_dir --out "$OUT/$mm" --steps-per-task 3000 --warmup 1000 --threads 2 --no-progress \
       --no-tensorboard --eval-interval 0 --checkpoint-interval 1500 --matmul "$mm" > "$OUT/$mm.out" 2>&1
    rc=$?; t1=$(date +%s.%N)
    python3 - "$OUT/$mm/checkpoint.pt" "$rep" "$mm" "$(echo "$t1 - $t0" | bc)" "$rc" <<'PY'
import sys, torch
ck = torch.load(sys.argv[1], weights_only=False, map_location="cpu")
tu, tt = ck["time_update"], ck["time_total"]
print(f"run {sys.argv[2]} {sys.argv[3]}: wall {float(sys.argv[4]):.1f} s (rc {sys.argv[5]}), loop {tt:.1f} s, "
      f"{1e3 * tu / 1000:.1f} ms per update, {1e3 * (tt - tu) / 3000:.2f} ms per env step outside the update")
PY
  done
done
