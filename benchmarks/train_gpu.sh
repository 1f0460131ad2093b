#!/usr/bin/env bash
# Train the bundled model in device calls of at most 540 s each (docs/training.md, "Recipe for two calls", "Stage 3").
#
#   bash benchmarks/train_gpu.sh stage1 OUT [--smoke]
#   bash benchmarks/train_gpu.sh stage2 OUT [--smoke] [--init DIR]
#   bash benchmarks/train_gpu.sh stage3 OUT [--smoke] [--init DIR]
#
# stage1: the `base` preset from scratch, dense auxiliary targets, 16-64 frames, a needle-duration curriculum.
# stage2: continues from stage 1's dense checkpoint at 16-256 frames (2,048 video tokens), then the AdaSpark
#         fine-tune (cube 8x4x4 = one 128-token kernel tile); leaves both checkpoints.
# stage3: continues a dense checkpoint (--init DIR, default the bundled models/adaspark-synth-small-dense): a short
#         dense part where half the retrieval items show both the heart and the ball (--look-alike 0.5), then a
#         long AdaSpark fine-tune (batches of 32 videos of one length, the batched reference kernels). The bundled
#         dense checkpoint is stage 3's own output since 2026-12-02: to reproduce it, pass stage 2's dense/.
# Stage 1 keeps its run in /tmp/adaspark-train (a warm machine's stage 2 resumes from there); stage 2 falls back
# to --init DIR, else gpu_stage1/stage1/dense in the repository root (stage 1's OUT, carried back).
#
# OUT gets at most 8 files, each under 16 MiB, at most 2 folders down: per checkpoint model.safetensors (bf16)
# and config.json, the run's log and train_log.json, the processor's files in one tar. Needs only
# PYTHONPATH=src, torch and transformers (no PyAV, no decord: the videos are rendered in memory).
# --smoke: the tiny preset on the CPU, two steps a part (tests/test_train.py runs it).
set -euo pipefail

stage=${1:?usage: train_gpu.sh stage1|stage2|stage3 OUT [--smoke] [--init DIR]}
out=${2:?usage: train_gpu.sh stage1|stage2|stage3 OUT [--smoke] [--init DIR]}
shift 2
smoke=0
init=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1; shift ;;
    --init) init=${2:?--init needs a checkpoint folder}; shift 2 ;;
    *) echo "train_gpu.sh: unknown option $1 (use --smoke or --init DIR)" >&2; exit 2 ;;
  esac
done
case "$stage" in stage1|stage2|stage3) ;; *) echo "train_gpu.sh: the stage is stage1, stage2 or stage3, got $stage" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
work=${ADASPARK_TRAIN_DIR:-/tmp/adaspark-train}
mkdir -p "$out" "$work"
log="$out/$stage.log"

if [ "$smoke" = 1 ]; then
  # every stage's flags below, with the tiny preset and two steps a part (steps, not seconds: a loaded CPU is slow)
  dense_steps=2 sparse_steps=2
  common=(--workers 1 --device cpu --batch 4 --check-items 4 --log-every 1 --save-dtype bfloat16 --aux-weight 1)
  s1=(--preset tiny --lengths 16,32 --time-budget 300)
  s2=(--lengths 16,32 --time-budget 300 --sparse-lengths 16 --sparse-batch 2)
  s3=(--lengths 16,32 --time-budget 300 --dense-share 0.5 --look-alike 0.5 --sparse-lengths 16,32
      --sparse-batch 4)
else
  dense_steps=1000000 sparse_steps=1000000  # the time budgets end each part
  common=(--workers 14 --batch 64 --check-items 128 --check-every 1500 --log-every 100 --save-dtype bfloat16
          --aux-weight 1)
  # stage 1: 440 s of training (+ start, checks and saving: about 500 s of the 540)
  s1=(--preset base --lengths 16,32,64 --length-weights 1,1,2 --lr 2e-3 --warmup 200
      --needle-share 1,0.5,0.25,0 --time-budget "${STAGE1_BUDGET:-440}")
  # stage 2: 420 s, 85 % dense at up to 256 frames, then the AdaSpark fine-tune (16 videos a step, batch 1 each)
  s2=(--lengths 16,32,64,128,256 --length-weights 1,1,1,2,2 --lr 1e-3 --warmup 100 --needle-share 0.25,0,0,0
      --time-budget "${STAGE2_BUDGET:-420}" --dense-share 0.85 --sparse-lengths 32,64,128 --sparse-batch 16
      --sparse-lr 2e-4)
  # stage 3: 470 s, 35 % dense (lr 3e-4, fresh auxiliary heads), then the AdaSpark fine-tune: 32 videos a step
  # (16 at 256 frames), one forward each
  s3=(--lengths 16,32,64,128,256 --length-weights 1,1,1,2,2 --lr 3e-4 --warmup 50 --look-alike 0.5
      --time-budget "${STAGE3_BUDGET:-470}" --dense-share 0.35 --sparse-lengths 32,64,128,256 --sparse-batch 32
      --sparse-lr 2e-4 --log-every 25)
fi

{
  date -u
  "$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  nproc
} >"$log" 2>&1

status=0
keep() {  # a checkpoint's weights and config, where the run got far enough to write them
  if [ -f "$1/model.safetensors" ]; then mkdir -p "$2" && cp "$1/model.safetensors" "$1/config.json" "$2/"; fi
}
keep_file() { if [ -f "$1" ]; then cp "$1" "$2"; fi; }
keep_checkpoints() {  # a stage's dense/ and adaspark/, its log, the processor's files (the same in both) in one tar
  keep "$work/$1/dense" "$out/dense"
  keep "$work/$1/adaspark" "$out/adaspark"
  keep_file "$work/$1/train_log.json" "$out/$1_train_log.json"
  if [ -d "$work/$1/dense" ]; then  # OUT holds at most 8 files
    (cd "$work/$1/dense" && tar -cf - --exclude model.safetensors --exclude config.json .) >"$out/processor.tar"
  fi
}

continue_from() {  # INIT STAGE SEED FLAGS...: a dense part, then the AdaSpark fine-tune (cube 8x4x4, top-p 0.3 / 0.1)
  local from=$1 name=$2 seed=$3
  shift 3
  echo "${name/stage/stage }" continues from "$from" | tee -a "$log"
  rm -rf "${work:?}/$name"
  "$py" -m adaspark_cli.train --out "$work/$name" --init "$from" "${common[@]}" "$@" --steps "$dense_steps" \
    --sparse-steps "$sparse_steps" --cube 8x4x4 --attn-top-p 0.3 --ffn-top-p 0.1 --seed "$seed" 2>&1 | tee -a "$log" || status=$?
  keep_checkpoints "$name"
}

if [ "$stage" = stage1 ]; then
  rm -rf "$work/stage1"
  "$py" -m adaspark_cli.train --out "$work/stage1" "${common[@]}" "${s1[@]}" --steps "$dense_steps" --sparse-steps 0 \
    --seed 1 2>&1 | tee -a "$log" || status=$?
  keep "$work/stage1/dense" "$out/stage1/dense"
  keep_file "$work/stage1/aux_heads.pt" "$out/stage1/aux_heads.pt"  # stage 2 picks them up beside dense/
  keep_file "$work/stage1/train_log.json" "$out/stage1_train_log.json"
elif [ "$stage" = stage3 ]; then
  init=${init:-models/adaspark-synth-small-dense}
  if [ ! -f "$init/model.safetensors" ]; then
    echo "train_gpu.sh: no checkpoint at $init; pass --init DIR (a dense checkpoint folder)" | tee -a "$log" >&2
    exit 2
  fi
  continue_from "$init" stage3 3 "${s3[@]}"
else
  if [ -z "$init" ]; then
    for cand in "$work/stage1/dense" gpu_stage1/stage1/dense; do
      if [ -f "$cand/model.safetensors" ]; then init=$cand; break; fi
    done
  fi
  if [ -z "$init" ] || [ ! -f "$init/model.safetensors" ]; then
    echo "train_gpu.sh: no stage-1 checkpoint (looked in $work/stage1/dense and gpu_stage1/stage1/dense);" \
      "run stage1 first or pass --init DIR" | tee -a "$log" >&2
    exit 2
  fi
  continue_from "$init" stage2 2 "${s2[@]}"
fi
date -u >>"$log"
find "$out" -type f -printf '%s %p\n' | tee -a "$log"
exit "$status"
