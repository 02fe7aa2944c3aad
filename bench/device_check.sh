#!/usr/bin/env bash
# The accelerator check: the training loop's throughput on one GPU (or TPU),
# in under 8 minutes (a time limit per depth and part), on a machine with JAX, Flax, Optax, Orbax, PyTorch and
# NumPy but no TensorFlow, TFDS or ml_collections and no network.
#
#   bash bench/device_check.sh              # writes to $OUT, else bench/out
#   QUICK=1 bash bench/device_check.sh      # a tiny run, to test the script
#
# The data are synthetic uint8 images on the device (jax_resnet.bench.loop),
# so TFDS is not needed; ml_collections comes from the wheel beside this
# script (a pure-Python wheel is importable as it is). Every row is written
# as soon as it is measured: a run cut short keeps its rows.
#
# It measures, for ResNet-20/56/110 at batch 128:
#   loop.{json,md}:   JAX float32 and bfloat16, 1 and 8 steps per dispatch,
#                     and PyTorch (channels_last; float32, bfloat16 autocast)
#   packed.{json,md}: 8 seeds packed into one program against 1
# with the compile time of each JAX row.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT:$(ls "$HERE"/wheels/*.whl | tr '\n' ':')${PYTHONPATH:-}"
export TF_CPP_MIN_LOG_LEVEL=2
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

if [[ -n "${QUICK:-}" ]]; then
  DEPTHS=8; STEPS=3; EPOCHS=1; PACKS=2; DISPATCH=1,2; BATCH=16
  LOOP_LIMIT=900; PACK_LIMIT=600  # A CPU compiles slowly.
else
  DEPTHS=20,56,110; STEPS=50; EPOCHS=2; PACKS=8; DISPATCH=1,8; BATCH=128
  LOOP_LIMIT=100; PACK_LIMIT=50
fi

"$PYTHON" - <<'EOF' | tee "$OUT/machine.txt"
import jax, platform
print('jax', jax.__version__, 'backend', jax.default_backend(),
      'devices', [d.device_kind for d in jax.devices()],
      'python', platform.python_version())
try:
  import torch
  print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
except ImportError:
  print('torch: not installed')
EOF

start=$SECONDS
# One depth at a time, the smallest first, each in its own process and time
# limit, so that a slow compile costs its own rows only.
for depth in ${DEPTHS//,/ }; do
  timeout "$LOOP_LIMIT" "$PYTHON" -m jax_resnet.bench.loop --depths="$depth" \
    --dtypes=float32,bfloat16 --steps_per_dispatch="$DISPATCH" --packs=1 \
    --torch_dtypes=float32,bfloat16 --steps="$STEPS" --epochs="$EPOCHS" \
    --batch_size="$BATCH" \
    --json="$OUT/loop_$depth.json" --markdown="$OUT/loop_$depth.md" \
    || echo "ResNet-$depth loop rows: exit $? after $((SECONDS - start)) s"
  timeout "$PACK_LIMIT" "$PYTHON" -m jax_resnet.bench.loop --depths="$depth" \
    --dtypes=float32 --steps_per_dispatch="${DISPATCH##*,}" \
    --packs="1,$PACKS" --steps="$STEPS" --epochs="$EPOCHS" \
    --batch_size="$BATCH" \
    --json="$OUT/packed_$depth.json" --markdown="$OUT/packed_$depth.md" \
    || echo "ResNet-$depth packed rows: exit $? after $((SECONDS - start)) s"
done
echo "device check: $((SECONDS - start)) s; tables in $OUT"
cat "$OUT"/loop_*.md "$OUT"/packed_*.md 2>/dev/null || true
