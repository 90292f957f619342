#!/usr/bin/env bash
# What issue 7 still needs measured on an accelerator. Each step fits one device call (< 600 s);
# logs and JSON land in $OUT (default bench/results/pending). From the repository root on the
# device, with our wheels on PYTHONPATH (bench/README.md, "On the lent machines (no package
# index)"):
#   bash bench/gpu_pending.sh hcnn musicnn     # about 4 minutes on an H100
#   bash bench/gpu_pending.sh zoo              # about 4 minutes
#   bash bench/gpu_pending.sh e2e              # about 6 minutes (most of it building the set)
#   bash bench/gpu_pending.sh xla              # about 4 minutes
#   bash bench/gpu_pending.sh fused            # about 6 minutes (issue 17: the fused layer 1)
# A failed step is logged and the next one still runs.
set -u
OUT=${OUT:-bench/results/pending}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/device.txt" 2>&1
run() {  # run NAME ARGS...: python -m ARGS, output to $OUT/NAME.log, at most $LIMIT s (280)
  local name=$1; shift
  echo "== $name: python -m $*"
  timeout "${LIMIT:-280}" python -m "$@" > "$OUT/$name.log" 2>&1 || echo "   (exit $?)"
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
    e2e)  # the input pipeline on the MTAT-sized rendered set (synth_gm/large: 15,247 train
          # tracks of 29.1 s, 14 GB), not the 1,000 fake tracks of the last GPU run. Building it
          # is bound by the writer's zstd (~8 ms a track in one process): ~3 minutes.
      data=${E2E_DATA_DIR:-/tmp/e2e_tfds}
      df -h /dev/shm "$(dirname "$data")" > "$OUT/e2e_disks.txt" 2>&1
      # 8 renderers (34 ms a clip each) outpace the one writer (~9 ms a clip) and leave it a core.
      LIMIT=330 run build_synth_gm_large datasets.build synth_gm --config large \
          --data_dir "$data" --num_workers 8
      tail -n 3 "$OUT/build_synth_gm_large.log"
      # The decoded split (14 GB) goes to /dev/shm where it fits, else to page cache on disk.
      decoded=/dev/shm
      [ "$(df --output=avail -B1G /dev/shm 2>/dev/null | tail -n 1)" -ge 16 ] 2>/dev/null \
          || decoded=$(dirname "$data")
      LIMIT=250 run end_to_end_large bench.end_to_end --dataset synth_gm/large --data_dir "$data" \
          --batch 256 --feeds disk:15:int16,memory:15:int16 --steps 40 --warmup 10 \
          --decoded_dir "$decoded" --json "$OUT/end_to_end_large.json" ;;
    xla)  # XLA's experimental cuDNN conv fusions (openxla/xla#34034, #37311: convolutions as
          # cuDNN graphs that grow epilogues from their users), the one compiler-side route to
          # the fused kernels that bench.roofline says the targets need; same call, flag off
          # then on, so the two rows compare.
      run breakdown_hcnn_xla_default bench.breakdown --model hcnn --batch 256 --dtype bfloat16 \
          --steps 20 --variants '{"base": {}, "fold_bn": {"fold_bn": true}}' \
          --json "$OUT/breakdown_hcnn_xla_default.json"
      XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_experimental_enable_conv_fusion=true" \
        run breakdown_hcnn_conv_fusion bench.breakdown --model hcnn --batch 256 \
          --dtype bfloat16 --steps 20 --variants '{"base": {}, "fold_bn": {"fold_bn": true}}' \
          --trace "$OUT/trace_hcnn_conv_fusion" --json "$OUT/breakdown_hcnn_conv_fusion.json" ;;
    fused)  # The fused layer-1 kernel (hcnn_jax/models/fused_conv_pool.py): its parity and
            # speed alone at HCNN's layer-1 shape, its interpret-mode tests compiled by Triton
            # here, then the whole HCNN train step with and without it, and with XLA's cuDNN
            # conv fusions (see xla). At most 8 files come back: no traces.
      LIMIT=150 run fused_layer1 bench.fused_layer1 --batch 256 --json "$OUT/fused_layer1.json"
      echo "== fused_tests: pytest tests/models/test_fused_conv_pool.py (kernel-level)"
      timeout 150 python -m pytest -q -p no:cacheprovider tests/models/test_fused_conv_pool.py \
          -k 'match_xla or statistics' > "$OUT/fused_tests.log" 2>&1 || echo "   (exit $?)"
      tail -n 3 "$OUT/fused_tests.log"
      variants='{"base": {}, "pool_first": {"speed": {"pool_first": true}},
                 "fused": {"speed": {"fused_conv_pool": true}}}'
      LIMIT=200 run breakdown_hcnn_fused bench.breakdown --model hcnn --batch 256 \
          --dtype bfloat16 --steps 20 --variants "$variants" \
          --json "$OUT/breakdown_hcnn_fused.json"
      XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_experimental_enable_conv_fusion=true" LIMIT=150 \
        run breakdown_hcnn_fused_conv_fusion bench.breakdown --model hcnn --batch 256 \
          --dtype bfloat16 --steps 20 \
          --variants '{"base": {}, "fused": {"speed": {"fused_conv_pool": true}}}' \
          --json "$OUT/breakdown_hcnn_fused_conv_fusion.json" ;;
    *) echo "unknown step $step (hcnn, musicnn, zoo, e2e, xla, fused)" ;;
  esac
done
