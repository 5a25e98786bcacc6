#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node (all its GPUs), same command on every node.
# jax.distributed.initialize() reads SLURM's environment (node list, SLURM_PROCID, SLURM_NTASKS).
# Usage: sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm.sh CONFIG WORKDIR [flags...]
# WORKDIR must be on storage every node sees.
# No remote shell is involved: srun executes the argument vector as given ("$@"), so every argument arrives as
# one word, whatever spaces or ';' it holds.
#SBATCH --job-name=stylex_jax
#SBATCH --ntasks-per-node=1
#SBATCH --signal=TERM@120
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: sbatch [options] $0 CONFIG WORKDIR [flags...]" >&2; exit 2; }
CONFIG=$1 WORKDIR=$2; shift 2
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}}
cd "$REPO"
# --signal=TERM@120: SLURM sends SIGTERM 2 minutes before the time limit; train.py then saves a checkpoint and
# exits, and resubmitting the same job resumes from it.
srun python launch/train.py --config "$CONFIG" --workdir "$WORKDIR" "$@"
