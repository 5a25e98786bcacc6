#!/usr/bin/env bash
# The accelerator figures of benchmarks/README.md in one prepared run (GPU or TPU; written for one H200, ~8 min):
#   1. the GAN iteration at 256², 3 channels, `auto`-sized (channel_base 16384, max 512, 2 mapping layers), batch 16,
#      lazy regularisation, in float32 and bfloat16 — to compare with NVIDIA's published 12.5 s/kimg on one A100
#      for the same configuration (goal: below half of it);
#   2. the explainer's batched path at 256² (configs/kl_xray.py's models, randomly initialised: speed only).
# Each figure is one line `name value unit`; everything also goes to $OUT (or ./accelerator_out) as a log.
# Needs jax with the accelerator plugin, flax, optax, orbax-checkpoint, ml_collections, numpy (no TensorFlow):
# the import check below names what is missing instead of failing halfway.
#   usage: bash benchmarks/accelerator.sh            (STEPS=30 for longer timing windows)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-accelerator_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STEPS=${STEPS:-12}
python - <<'EOF' 2>&1 | tee "$OUT/env.txt" || exit 1
import importlib, sys
missing = [m for m in ('jax', 'flax', 'optax', 'orbax.checkpoint', 'ml_collections', 'numpy', 'etils')
           if importlib.util.find_spec(m.split('.')[0]) is None]
if missing:
  sys.exit(f'error: missing python packages {missing}; install them (pip install -e . --no-deps plus these)')
import jax
print(f'# jax {jax.__version__} backend={jax.default_backend()} devices={jax.devices()}')
EOF
ARGS="--res 256 --channels 3 --channel-base 16384 --channel-max 512 --batch 16 --map 2 --steps $STEPS --per-step"
run() {  # run NAME CMD...: one timed command, its output kept even when it fails
  local name=$1; shift
  echo "## $name: $*" | tee -a "$OUT/log.txt"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$OUT/$name.txt" | tee -a "$OUT/log.txt"
  echo "# $name wall $((SECONDS - t0)) s, exit ${PIPESTATUS[0]}" | tee -a "$OUT/log.txt"
}
run gan_step_fp32 python benchmarks/gan_step.py $ARGS
run gan_step_bf16 python benchmarks/gan_step.py $ARGS --dtype bfloat16
run explain_256 python benchmarks/explain.py --config configs/kl_xray.py --random-init --batch 256 --loop-images 8 \
  --frame-loop-images 2
