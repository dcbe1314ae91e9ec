#!/usr/bin/env bash
# A Cloud TPU VM or pod slice: the same command runs on every worker; jax.distributed
# discovers the pod on its own (no coordinator to set).
# Usage (from your workstation):
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR DATA_DIR [--config.KEY=VALUE ...]
#   CONFIG    e.g. configs/unet_sample.py (a path inside ~/satseg-jax on the workers)
#   WORKDIR   gs:// path or a shared filesystem mounted on every worker (checkpoints are
#             written by every worker)
#   DATA_DIR  written by `satseg build`, readable by every worker
# SATSEG_DISTRIBUTED_AUTO=1 makes every worker call jax.distributed.initialize() with no
# arguments: on a TPU VM jax finds the other workers through the metadata server, which
# no environment variable reveals (GKE TPU pods set TPU_WORKER_HOSTNAMES and are
# detected without it).
set -euo pipefail
TPU=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; DATA=$5; shift 5
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd ~/satseg-jax && pip install -q -e . 'jax[tpu]' &&
  SATSEG_DISTRIBUTED_AUTO=1 satseg train --config $CONFIG --workdir $WORKDIR \
    --config.data.data_dir=$DATA $*"
