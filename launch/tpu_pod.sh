#!/usr/bin/env bash
# A Cloud TPU VM or pod slice: the same command runs on every worker; jax.distributed
# discovers the pod on its own (no coordinator to set).
# Usage (from your workstation):
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR DATA_DIR [--config.KEY=VALUE ...]
# WORKDIR/DATA_DIR: gs:// paths or a shared filesystem mounted on every worker.
set -euo pipefail
TPU=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; DATA=$5; shift 5
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd ~/satseg-jax && pip install -q -e . 'jax[tpu]' &&
  SATSEG_TPU=1 satseg train --config $CONFIG --workdir $WORKDIR --config.data.data_dir=$DATA $*"
