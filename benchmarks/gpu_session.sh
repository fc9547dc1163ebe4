#!/bin/bash
# One short GPU session in ~10 minutes, for a machine with jax, flax, optax, orbax, chex and
# torch but no network (the project's lent H100/H200 machines): the accelerator bench (every
# model in f32 and bf16, the fused and population rows), PyTorch's references on the same GPU
# (plain and --tuned), the default GAN run, then nanoGPT's char Transformer (bf16) for what time
# is left. Everything it measures lands in $OUT (default ./gpu_out).
# Prepare here, from the repository root (wheels of what that machine lacks, and the corpus):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl \
#       ml-collections==1.1.0 tensorboardX==2.6.4 mlxtend==0.25.0
#   mkdir -p .gpu && cp ../shared/data/tinyshakespeare/input.txt .gpu/
# then run there: bash benchmarks/gpu_session.sh
cd "$(dirname "$0")/.." || exit 1
T0=$(date +%s)
left() { echo $(( $1 - ($(date +%s) - T0) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 DEEPGEN_CACHE_DIR=/tmp/jaxcache
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
LOG="$OUT/log.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c "import jax, flax, optax, orbax.checkpoint as o, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
  nproc; } 2>&1 | tee "$LOG"
echo "== smoke at $(( $(date +%s) - T0 )) s" | tee -a "$LOG"
timeout 120 python3 -m benchmarks.accelerator --smoke --only mlpgan dcgan --out /tmp/smoke.json \
    >/dev/null 2>>"$LOG" || { echo SMOKE FAILED | tee -a "$LOG"; tail -60 "$LOG"; exit 1; }
echo "== bench at $(( $(date +%s) - T0 )) s" | tee -a "$LOG"
timeout "$(left 330)" python3 -m benchmarks.accelerator --out "$OUT"/bench_gpu.json >/dev/null 2>>"$LOG"
echo "== torch rc=$? at $(( $(date +%s) - T0 )) s" | tee -a "$LOG"
for m in dcgan:128 mlpgan:128 vae:128 rbm:128 charlstm:64 transformer:12; do
  for t in "" --tuned; do
    timeout 45 python3 benchmarks/torch_reference.py "${m%%:*}" --batch "${m##*:}" --steps 200 \
        --device cuda $t 2>>"$LOG"
  done
done | tee "$OUT"/torch.jsonl
echo "== gan at $(( $(date +%s) - T0 )) s" | tee -a "$LOG"
timeout "$(left 470)" python3 -m experiments.gan_mnist --workdir /tmp/gan > /tmp/gan.log 2>&1
echo "gan rc=$?" >> /tmp/gan.log
echo "== gpt at $(( $(date +%s) - T0 )) s" | tee -a "$LOG"
timeout "$(left 585)" python3 -m experiments.char_lm --config=experiments/char_lm.py:gpt \
    --config.data.path=.gpu/input.txt --config.train.precision=bf16 --workdir /tmp/gpt \
    > /tmp/gpt.log 2>&1
echo "gpt rc=$?" >> /tmp/gpt.log
echo "== end at $(( $(date +%s) - T0 )) s" | tee -a "$LOG"
cp /tmp/gan.log /tmp/gpt.log /tmp/gan/samples/step_002400.png "$OUT"/ 2>/dev/null
tar czf "$OUT"/workdirs.tgz -C /tmp --exclude='*/checkpoints' gan gpt 2>/dev/null
ls -la "$OUT"
