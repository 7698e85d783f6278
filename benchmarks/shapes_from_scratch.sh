#!/usr/bin/env bash
# RT-DETR-SpaRTAN-T trained from scratch on the generated shapes set, on the CPU: the training
# benchmark quoted in docs/results.md ("Training on generated shapes data"). Wall time and the AP / AP50 of
# every epoch go to OUT/benchmark.txt; the per-epoch log is OUT/log.txt and the curve
# OUT/curve.png.
#
#   bash benchmarks/shapes_from_scratch.sh [OUT] [DATA]     # defaults: output/shapes_bench data/shapes_bench
#
# Dataset: 1600 training and 100 validation images of 256 px, seed 0, at most 4 shapes each.
# Model and schedule: configs/rtdetr/rtdetr_spartan_t_shapes.yml (160 px, batch 8, 4 epochs).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-output/shapes_bench}
data=${2:-data/shapes_bench}

if [ ! -f "$data/annotations/instances_val.json" ]; then
  python tools/make_shapes.py --out "$data" --train 1600 --val 100 --size 256 --seed 0
fi

start=$(date +%s)
python tools/train.py -c configs/rtdetr/rtdetr_spartan_t_shapes.yml --seed 0 --overwrite --output-dir "$out" \
  -u train_dataloader.dataset.img_folder="$data/train" \
     train_dataloader.dataset.ann_file="$data/annotations/instances_train.json" \
     val_dataloader.dataset.img_folder="$data/val" \
     val_dataloader.dataset.ann_file="$data/annotations/instances_val.json"
seconds=$(( $(date +%s) - start ))

python - "$out" "$seconds" <<'EOF'
import json
import sys
from pathlib import Path

from rtdetr_spartan.misc.plot import plot_training_curves

out, seconds = Path(sys.argv[1]), int(sys.argv[2])
lines = [f"training wall time {seconds} s ({seconds / 60:.1f} min)"]
for line in (out / "log.txt").read_text().splitlines():
    record = json.loads(line)
    ap, ap50 = record["test_coco_eval_bbox"][:2]
    lines.append(f"epoch {record['epoch']}: AP {ap:.3f} AP50 {ap50:.3f}")
plot_training_curves(out / "log.txt", out / "curve.png", title="RT-DETR-SpaRTAN-T, shapes, from scratch")
(out / "benchmark.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
