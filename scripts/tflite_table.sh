#!/usr/bin/env bash
# The mobile guide's TFLite table: train a small Mixer on CIFAR-10 (once), export every TFLite
# mode, write the markdown table. Usage: scripts/tflite_table.sh [DATA] [OUT_DIR]
# DATA: the cifar10-jpg tarball, or any image folder with train/ and test/ (default:
# ../shared/data/cifar10-jpg/cifar10-jpg.tar.gz; OUT_DIR default runs/tflite_table).
# ~6 min of training on 2 cores the first time, then ~2 min per table.
set -euo pipefail
cd "$(dirname "$0")/.."
TAR=${1:-../shared/data/cifar10-jpg/cifar10-jpg.tar.gz}
OUT=${2:-runs/tflite_table}
PY=${PYTHON:-python}
if [ -d "$TAR" ]; then
  DATA="$TAR"
elif [ -f "$TAR" ] || [ -e "$OUT/cifar10-jpg/.extracted" ]; then
  DATA="$OUT/cifar10-jpg"
  mkdir -p "$DATA"
  [ -e "$DATA/.extracted" ] || "$PY" -c "import sys; from keras_mixer.data import extract_image_tar; extract_image_tar(*sys.argv[1:])" "$TAR" "$DATA"
else
  echo "error: no data at $TAR: pass the cifar10-jpg tarball or an image folder with train/ and test/" \
       "(e.g. bash scripts/tflite_table.sh path/to/cifar10-jpg.tar.gz)" >&2
  exit 2
fi
[ -e "$OUT/run/model.keras" ] || "$PY" -m keras_mixer.cli train --data "$DATA" --image-size 32 --patch-size 4 \
    --num-blocks 2 --hidden-dim 64 --tokens-mlp-dim 32 --channels-mlp-dim 256 --epochs 4 --batch-size 128 \
    --flip --run-dir "$OUT/run" --no-export --backend jax
"$PY" -m keras_mixer.cli export tflite "$OUT/run/model.keras" --backend tensorflow \
    --representative-images "$DATA/train" --eval-images "$DATA/test" --max-eval-images 1000 \
    --export-dir "$OUT/export" --name cifar --table "$OUT/table.md"
lscpu | grep -E "Model name|Flags" | sed 's/^/    /' > "$OUT/cpu.txt"
cat "$OUT/table.md"
