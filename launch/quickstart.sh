#!/usr/bin/env bash
# The quickstart, end to end on a generated georeferenced sample scene (CPU is enough):
#   install -> sample -> compose -> patches -> build -> train -> evaluate.
# Usage: bash launch/quickstart.sh [RUN_DIR]     (default: runs/quickstart)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/quickstart}

python -m pip install --quiet -e ".[onednn]"
export TF_CPP_MIN_LOG_LEVEL=2

rm -rf "$RUN"
mkdir -p "$RUN"
echo "== 1/8 sample scene (1024x1024 px, 4 bands, 8 m, UTM) -> $RUN/sample"
satseg sample --out "$RUN/sample" --size 1024 --seed 0
echo "== 2/8 compose blue, green, red, nir -> $RUN/scene.tif"
satseg compose --bands "$RUN"/sample/{blue,green,red,nir}.tif --out "$RUN/scene.tif"
echo "== 3/8 patches 128 px (labels from the GeoJSON polygons) -> $RUN/patches"
satseg patches --image "$RUN/scene.tif" --vector "$RUN/sample/labels.geojson" --class-field class \
  --classes "$RUN/sample/classes.json" --size 128 --stride 128 --min-valid 0.5 --out "$RUN/patches"
echo "== 4/8 build the tfds dataset (block split) -> $RUN/data"
satseg build --patches "$RUN/patches" --out "$RUN/data" --split 0.7,0.15,0.15 --split-by block
echo "== 5/8 train a small U-Net (configs/unet_sample.py) -> $RUN/train"
satseg train --config configs/unet_sample.py --workdir "$RUN/train" \
  --config.data.data_dir="$RUN/data"
echo "== 6/8 evaluate on the test split"
satseg evaluate --workdir "$RUN/train" --split test --save-predictions --overlays 6
echo "== 7/8 predict the whole scene -> $RUN/map.tif"
satseg predict --workdir "$RUN/train" --image "$RUN/scene.tif" --out "$RUN/map.tif" \
  --tile 256 --overlap 64 --blend gaussian
echo "== 8/8 area per class (km²)"
satseg area --map "$RUN/map.tif" --classes "$RUN/sample/classes.json" --out "$RUN/area.csv"
satseg plot --image "$RUN/scene.tif" --map "$RUN/map.tif" --classes "$RUN/sample/classes.json" \
  --out "$RUN/map_preview.png"
echo "Done. TensorBoard: tensorboard --logdir $RUN/train"
