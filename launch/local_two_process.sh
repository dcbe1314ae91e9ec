#!/usr/bin/env bash
# Two processes on this machine, each with 2 (forced) CPU devices, training as ONE
# jax.distributed job: the smallest real multi-host run, to try a multi-host change
# (per-host input, collectives over gloo, checkpoints written by every process) on a
# laptop before taking it to a cluster.
#
# Usage: bash launch/local_two_process.sh CONFIG WORKDIR DATA_DIR [--config.KEY=VALUE ...]
#   CONFIG    the get_config() file, e.g. configs/unet_sample.py (what to train)
#   WORKDIR   the run directory both processes share, e.g. runs/two_process
#             (Orbax checkpoints from both processes, config.json, TensorBoard events
#             and metrics from process 0); resumes when it already holds checkpoints
#   DATA_DIR  a dataset written by `satseg build`, e.g. runs/quickstart/data; each
#             process reads its own half of every epoch from it
#   --config.KEY=VALUE  any override, as for `satseg train`; config.train.batch_size
#             must be a multiple of 4 (2 processes x 2 devices)
# Environment: SATSEG_PORT (coordinator port, default: a free one), XLA_FLAGS (appended).
#
# Lines are prefixed with [process N]; only process 0 prints progress, every process
# prints its own errors. If one process fails, the other is stopped and the script exits
# with the failing status. Evaluate afterwards with one process:
#   satseg evaluate --workdir WORKDIR --split test
set -euo pipefail
if (($# < 3)); then
  echo "usage: bash $0 CONFIG WORKDIR DATA_DIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
CONFIG=$1; WORKDIR=$2; DATA=$3; shift 3

PORT=${SATSEG_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
# Read by satseg_jax.parallel.maybe_initialize_distributed in every process.
export SATSEG_COORDINATOR="localhost:$PORT"
export SATSEG_NUM_PROCESSES=2
# CPU only, 2 devices per process; cross-process collectives use gloo (jax's default
# CPU collectives implementation; nothing else to set).
export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=2 ${XLA_FLAGS:-}"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

pids=()
stop_all() {  # stop the processes this script started (and only those)
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

for i in 0 1; do
  SATSEG_PROCESS_ID=$i satseg train --config "$CONFIG" --workdir "$WORKDIR" \
    --config.data.data_dir="$DATA" "$@" \
    > >(sed -u "s/^/[process $i] /") 2> >(sed -u "s/^/[process $i] /" >&2) &
  pids+=($!)
done

status=0
remaining=("${pids[@]}")
while ((${#remaining[@]})); do
  finished=""
  if wait -n -p finished "${remaining[@]}"; then rc=0; else rc=$?; fi
  [[ -z $finished ]] && break
  remaining=("${remaining[@]/$finished}")
  read -ra remaining <<<"${remaining[*]}"
  if ((rc != 0 && status == 0)); then
    status=$rc
    # A process that failed alone leaves the other blocked in a collective: stop it.
    for p in "${remaining[@]}"; do kill "$p" 2>/dev/null || true; done
  fi
done
wait  # the output prefixers
exit "$status"
