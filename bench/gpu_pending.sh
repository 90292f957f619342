#!/usr/bin/env bash
# What issue 7 still needs measured on an accelerator, in one device call (about 6 minutes on an
# H100; each command's log and JSON land in $OUT, default bench/results/pending). Run from the
# repository root on the device, after putting our wheels on PYTHONPATH (bench/README.md, "On the
# lent machines"):
#   bash bench/gpu_pending.sh
# Each line is independent: a failure is logged and the next one still runs.
set -u
OUT=${OUT:-bench/results/pending}
mkdir -p "$OUT"
run() {  # run NAME ARGS...: python -m ARGS, output to $OUT/NAME.log
  local name=$1; shift
  echo "== $name: python -m $*"
  timeout 240 python -m "$@" > "$OUT/$name.log" 2>&1 || echo "   (exit $?)"
  tail -n 6 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/device.txt" 2>&1
# HCNN: BatchNorm after the pool in layers 1 and 5 (the same outputs, less memory traffic).
run breakdown_hcnn bench.breakdown --model hcnn --batch 256 --dtype bfloat16 --steps 20 \
    --json "$OUT/breakdown_hcnn.json"
# Musicnn: pool-first timbral banks and matmul gradients for their tall kernels, one by one.
run breakdown_musicnn bench.breakdown --model musicnn --batch 128 --dtype bfloat16 --steps 20 \
    --json "$OUT/breakdown_musicnn.json"
# The zoo member never timed on a GPU, and musicnn again at its new defaults.
run zoo bench.run --preset gpu --models crnn,musicnn --batch 128 --dtype bfloat16 --steps 20 \
    --json "$OUT/zoo.json"
