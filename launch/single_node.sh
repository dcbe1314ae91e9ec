#!/usr/bin/env bash
# One machine with several GPUs (or one TPU VM host): one process drives every local device.
# Usage: bash launch/single_node.sh CONFIG WORKDIR DATA_DIR [--config.KEY=VALUE ...]
#   CONFIG   e.g. configs/unet_sample.py    (what to train)
#   WORKDIR  e.g. /scratch/$USER/runs/unet  (checkpoints, TensorBoard events, metrics)
#   DATA_DIR e.g. /scratch/$USER/data/scene (written by `satseg build`)
# The global batch (config.train.batch_size) is split over all GPUs: keep it a multiple
# of the GPU count. jit (default) shards the batch over a mesh of all GPUs.
set -euo pipefail
CONFIG=$1; WORKDIR=$2; DATA=$3; shift 3
export TF_CPP_MIN_LOG_LEVEL=2
# Let XLA use most of the GPU memory but leave room for cuDNN workspaces.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
satseg train --config "$CONFIG" --workdir "$WORKDIR" --config.data.data_dir="$DATA" "$@"
satseg evaluate --workdir "$WORKDIR" --split test
