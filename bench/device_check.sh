#!/usr/bin/env bash
# The accelerator check: the training loop's throughput on one GPU (or TPU),
# in under 8 minutes, on a machine with JAX, Flax, Optax, Orbax, PyTorch and
# NumPy but no TensorFlow, TFDS or ml_collections and no network.
#
#   bash bench/device_check.sh              # writes to $OUT, else bench/out
#   QUICK=1 bash bench/device_check.sh      # a tiny run, to test the script
#
# The data are synthetic uint8 images on the device (jax_resnet.bench.loop),
# so TFDS is not needed; ml_collections comes from the wheel beside this
# script (a pure-Python wheel is importable as it is).
#
# It measures, for ResNet-20/56/110 at batch 128:
#   JAX float32 and bfloat16, 1 and 8 steps per dispatch, and PyTorch
#   (channels_last; float32, bfloat16 autocast);
#   8 seeds packed into one program against 1 (float32, 8 steps/dispatch);
# with the compile time of each JAX row. Each depth and part runs in its own
# process under its own time limit, and all of them under one deadline
# (TOTAL seconds), the most wanted first (ResNet-20's rows and packing, then
# ResNet-56's and ResNet-110's rows, then their packing), so that a slow
# compile costs its own rows only. Each part's rows are merged into
# device_check.{json,md} as soon as it ends: a run cut short keeps what it
# measured. $OUT holds four files: machine.txt, log.txt, device_check.json
# and device_check.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
OUT="${OUT:-$HERE/out}"
mkdir -p "$OUT"
PARTS="$(mktemp -d)"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONPATH="$ROOT:$(ls "$HERE"/wheels/*.whl | tr '\n' ':')${PYTHONPATH:-}"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

if [[ -n "${QUICK:-}" ]]; then
  DEPTHS=8; STEPS=3; EPOCHS=1; PACKS=2; DISPATCH=1,2; BATCH=16
  LOOP_LIMIT=900; PACK_LIMIT=600; TOTAL=1500  # A CPU compiles slowly.
else
  STEPS=50; EPOCHS=3; PACKS=8; DISPATCH=1,8; BATCH=128
  TOTAL="${TOTAL:-420}"
fi

"$PYTHON" - <<'EOF' | tee "$OUT/machine.txt"
import jax, platform
print('jax', jax.__version__, 'backend', jax.default_backend(),
      'devices', [d.device_kind for d in jax.devices()],
      'python', platform.python_version())
for name in ('flax', 'optax', 'orbax.checkpoint', 'numpy'):
  try:
    print(name, __import__(name, fromlist=['_']).__version__)
  except (ImportError, AttributeError) as e:
    print(name, 'unavailable:', e)
try:
  import torch
  print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
except ImportError:
  print('torch: not installed')
EOF

start=$SECONDS
merge() {
  "$PYTHON" - "$PARTS" "$OUT" <<'EOF'
import glob, json, os, sys
from jax_resnet.bench import loop
parts, out = sys.argv[1:]
rows = []
for path in sorted(glob.glob(os.path.join(parts, '*.json')),
                   key=os.path.getmtime):
  try:
    with open(path) as f:
      rows.extend(json.load(f))
  except (OSError, ValueError) as e:  # A part killed while writing.
    print(f'{path}: unreadable, left out ({e})')
with open(os.path.join(out, 'device_check.json'), 'w') as f:
  json.dump(rows, f, indent=1)
with open(os.path.join(out, 'device_check.md'), 'w') as f:
  f.write(loop.format_table(rows) + '\n')
EOF
}
# part NAME LIMIT ARGS...: one bench.loop process, limited to LIMIT seconds
# and to what is left of TOTAL.
part() {
  local name=$1 limit=$2
  shift 2
  local left=$((TOTAL - (SECONDS - start)))
  if ((left < 20)); then
    echo "$name: skipped, ${left} s left of ${TOTAL}"
    return
  fi
  ((limit > left)) && limit=$left
  timeout "$limit" "$PYTHON" -m jax_resnet.bench.loop "$@" \
    --steps="$STEPS" --epochs="$EPOCHS" --batch_size="$BATCH" \
    --json="$PARTS/$name.json" \
    || echo "$name: exit $? after $((SECONDS - start)) s (limit ${limit} s)"
  merge
}
loop() {
  part "loop_$1" "$2" --depths="$1" --dtypes=float32,bfloat16 \
    --steps_per_dispatch="$DISPATCH" --packs=1 --torch_dtypes=float32,bfloat16
}
packed() {
  part "packed_$1" "$2" --depths="$1" --dtypes=float32 \
    --steps_per_dispatch="${DISPATCH##*,}" --packs="1,$PACKS"
}
if [[ -n "${QUICK:-}" ]]; then
  loop "$DEPTHS" "$LOOP_LIMIT"
  packed "$DEPTHS" "$PACK_LIMIT"
else
  # Limits from the first H200 run (docs/results/device_check_h200): there a
  # JAX row of ResNet-20 took about 20 s (most of it compiling), of
  # ResNet-56 about 40 s, and ResNet-110 compiled 39 s for one row; 8
  # packed ResNet-20 seeds took over 70 s, when each seed still compiled
  # its own init.
  loop 20 120
  packed 20 100
  loop 56 200
  loop 110 240
  packed 56 100
  packed 110 120
fi
rm -rf "$PARTS"
echo "device check: $((SECONDS - start)) s; tables in $OUT"
cat "$OUT/device_check.md"
