#!/usr/bin/env bash
# Everything this project checks on a CUDA GPU, in one go (CI has no GPU):
#   1. benchmarks/gpu_check.py: parity fixtures on the GPU, a training step on the GPU against the
#      CPU, GPU latency of RT-DETR-R18 and RT-DETR-SpaRTAN-T (fp32 / fp16, batch 1 / 16, eager,
#      CUDA graph, cuDNN autotuning, torch.compile) and their top GPU kernels;
#   2. the tools on the GPU with torchrun (NCCL) and --amp: detector training on a generated shapes
#      set, resuming it, --test-only, and SpaRTAN classifier pretraining;
#   3. optionally (GPU_CHECK_ORT_THREADS="4 16"), benchmarks/deploy_latency.py on the machine's CPU.
# GPU_CHECK_SKIP_TOOLS=1 stops after step 1. The compile step alone may take its full 300 s: budget
# about 12 minutes of device time for the whole script, 8 for step 1.
#
#   bash benchmarks/gpu_check.sh [OUT]        # default output/gpu_check
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh /tmp/x   # dry run of the script itself
#
# Each step's log goes to OUT/<step>.log and one line per step to OUT/summary.txt; the script
# goes on after a failed step and exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-output/gpu_check}
mkdir -p "$out"
: > "$out/summary.txt"
failed=0

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || failed=1
  echo "$name: rc $rc, $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
  tail -n 3 "$out/$name.log"
}

data=$out/data
det_data=(train_dataloader.dataset.img_folder="$data/det/train"
          train_dataloader.dataset.ann_file="$data/det/annotations/instances_train.json"
          val_dataloader.dataset.img_folder="$data/det/val"
          val_dataloader.dataset.ann_file="$data/det/annotations/instances_val.json"
          train_dataloader.num_workers=2 val_dataloader.num_workers=2)
device=${GPU_CHECK_DEVICE:-cuda}
det=(-c configs/rtdetr/rtdetr_spartan_t_shapes.yml --device "$device" --amp --output-dir "$out/det")

step data 120 bash -c "python tools/make_shapes.py --out $data/det --train 256 --val 64 --size 256 &&
  python tools/make_shapes.py --out $data/cls --classification --train 512 --val 128 --size 64"
step checks 240 python benchmarks/gpu_check.py --out "$out" --device "$device" --sections parity train_step
if [ "$device" = cuda ]; then
  step latency 240 python benchmarks/gpu_check.py --out "$out" --sections latency
  step latency_cudnn_benchmark 120 python benchmarks/gpu_check.py --out "$out/cudnn_benchmark" --sections latency \
    --cudnn-benchmark --settings 1-float16-graph 16-float16-graph
  step profile 120 python benchmarks/gpu_check.py --out "$out" --sections profile
  step compiled 300 python benchmarks/gpu_check.py --out "$out" --sections latency --settings 1-float16-compile
fi
if [ -n "${GPU_CHECK_SKIP_TOOLS:-}" ]; then
  cat "$out/summary.txt"
  exit $failed
fi
step train 180 torchrun --standalone --nproc-per-node 1 tools/train.py "${det[@]}" --overwrite -u epochs=1 "${det_data[@]}"
step resume 180 torchrun --standalone --nproc-per-node 1 tools/train.py "${det[@]}" -r "$out/det/last.pth" \
  -u epochs=2 "${det_data[@]}"
step test_only 120 python tools/train.py "${det[@]}" -r "$out/det/last.pth" --test-only -u "${det_data[@]}"
step pretrain 180 torchrun --standalone --nproc-per-node 1 tools/pretrain.py -c configs/spartan/spartan_t_shapes_cls.yml \
  --device "$device" --amp --overwrite --output-dir "$out/cls" -u epochs=1 lr_scheduler.warmup_epochs=0 train_dataloader.dataset.root="$data/cls/train" \
  val_dataloader.dataset.root="$data/cls/val"
if [ -n "${GPU_CHECK_ORT_THREADS:-}" ]; then
  # shellcheck disable=SC2086
  step ort_cpu 300 python benchmarks/deploy_latency.py --threads $GPU_CHECK_ORT_THREADS --rounds 2 --runs 10
fi
cat "$out/summary.txt"
exit $failed
