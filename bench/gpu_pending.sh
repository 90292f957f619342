#!/usr/bin/env bash
# What issue 7 still needs measured on an accelerator. Each step fits one device call (< 600 s);
# logs and JSON land in $OUT (default bench/results/pending). From the repository root on the
# device, with our wheels on PYTHONPATH (bench/README.md, "On the lent machines (no package
# index)"):
#   bash bench/gpu_pending.sh hcnn musicnn     # about 4 minutes on an H100
#   bash bench/gpu_pending.sh zoo              # about 4 minutes
# A failed step is logged and the next one still runs.
set -u
OUT=${OUT:-bench/results/pending}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/device.txt" 2>&1
run() {  # run NAME ARGS...: python -m ARGS, output to $OUT/NAME.log
  local name=$1; shift
  echo "== $name: python -m $*"
  timeout 280 python -m "$@" > "$OUT/$name.log" 2>&1 || echo "   (exit $?)"
  grep '^|' "$OUT/$name.log" | head -n 12
}
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(hcnn musicnn zoo)
for step in "${steps[@]}"; do
  case $step in
    hcnn)  # BatchNorm after the pool in training (layers 1 and 5), and BatchNorm folded into
           # the convs in inference: the same outputs, less memory traffic.
      run breakdown_hcnn bench.breakdown --model hcnn --batch 256 --dtype bfloat16 --steps 20 \
          --json "$OUT/breakdown_hcnn.json" ;;
    musicnn)  # pool-first timbral banks and matmul gradients for their tall kernels, one by one;
              # the kernel profile of the reference order shows whether cuDNN shares the CPU's
              # slow single-output-channel input gradient.
      run breakdown_musicnn bench.breakdown --model musicnn --batch 128 --dtype bfloat16 \
          --steps 20 --trace "$OUT/trace_musicnn" --json "$OUT/breakdown_musicnn.json" ;;
    zoo)  # pool_first on the plain conv stacks, and crnn, never timed on a GPU.
      run breakdown_fcn bench.breakdown --model fcn --batch 64 --dtype bfloat16 --steps 10 \
          --json "$OUT/breakdown_fcn.json"
      run breakdown_crnn bench.breakdown --model crnn --batch 64 --dtype bfloat16 --steps 10 \
          --json "$OUT/breakdown_crnn.json" ;;
    *) echo "unknown step $step (hcnn, musicnn, zoo)" ;;
  esac
done
