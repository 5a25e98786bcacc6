#!/usr/bin/env bash
# Runs launch/train.py on every host of a Cloud TPU pod slice (same command on each host).
# jax.distributed.initialize() discovers the pod topology itself on TPU VMs.
# Usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [extra flags...]
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/kl_xray.py gs://bucket/kl_xray \
#       --config.data.manual_dir=/mnt/data/kl_xray
# The repo must be checked out (and `pip install -e .` done) at the same path on every host, and WORKDIR must be
# shared storage (a gs:// bucket or an NFS path) since orbax writes one checkpoint from all hosts.
# The remote command goes through the hosts' login shell (bash on TPU VMs): every argument is quoted with
# printf %q, so spaces, ';', '$' or quotes in a path or flag arrive as one word and are never run
# (tests/test_security.py checks it with a fake gcloud).
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [flags...]" >&2; exit 2; }
TPU=$1 ZONE=$2 CONFIG=$3 WORKDIR=$4; shift 4
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
REMOTE=$(printf 'cd %q && python launch/train.py --config %q --workdir %q' "$REPO" "$CONFIG" "$WORKDIR")
for arg in "$@"; do
  REMOTE+=$(printf ' %q' "$arg")
done
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$REMOTE"
