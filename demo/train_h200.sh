#!/usr/bin/env bash
# The demo model's training on one H200, in one device call (the machine stays warm only 30 s after a
# call, so nothing is left there for a second one). The shipped demo was made by:
#
#   BUDGET=565 VAE_S=120 CLIPS=600 MODELS=framepack bash benchmarks/on_device.sh bash demo/train_h200.sh all
#
# `all` = weights, then the clips rendered (CPU) while the VAE trains (GPU) for VAE_S seconds, vae-export,
# cache (CACHE_JOBS processes), the transformers of MODELS (framepack: inverted, framepack-f1: forward; two
# at once share the GPU and each runs far slower) until EXPORT_S seconds before BUDGET, export (a run stopped
# by the limit is finished at its last checkpoint, which writes its EMA weights).
# The stages also run alone, in that order, and each skips what is done and continues what was stopped.
# Carry (64 MiB in all; inputs only): .whl (diffusers 0.42.1, imageio-ffmpeg 0.6.0 unpacked as a .tar.xz, typer,
# rich, click, pydantic and their small dependencies), .demo/text (`python demo/build.py .demo/text --part text`
# here, 7 MB) and .demo/data/stills (`make demo-data CLIPS=0`).
# What comes back: $OUT/hub.tar.part-* (the hub with the trained transformers: cat hub.tar.part-* | tar -x -C .demo/hub),
# $OUT/vae.json and $OUT/<model>.log.jsonl; then `python demo/build.py .demo/hub --part package` writes the package's copy.
set -euo pipefail
BUDGET=${BUDGET:-570}             # seconds this command may use (the device stops it at 600)
HUB=.demo/hub DATA=.demo/data RUNS=.demo/runs CACHE=.demo/cache
CLIPS=${CLIPS:-1000} MAX_STEPS=${MAX_STEPS:-100000} BATCH=${BATCH:-64} VAE_S=${VAE_S:-170} EXPORT_S=${EXPORT_S:-35} WORKERS=${WORKERS:-14} DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-framepack framepack-f1} CACHE_JOBS=${CACHE_JOBS:-3}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((BUDGET - SECONDS - ${1:-0})); }
fpgen() { python3 -m fpgen "$@"; }
mkdir -p "$RUNS"
TRAIN=(--full --device "$DEVICE" --model-dir "$HUB" --size 128x128 --window 9 --cache-dir "$CACHE" --cache-in-ram --batch-size "$BATCH"
       --lr 3e-4 --warmup-steps 200 --lr-scheduler constant --max-steps "$MAX_STEPS" --shift 2 --guidance 1
       --no-gradient-checkpointing --ema ${EMA:-0.995} --caption-dropout 0.1 --save-every 250 --keep-checkpoints 1 --log-every 25 --json)

for stage in "$@"; do
  echo "== $stage ($(left) s left)"
  case $stage in
    weights)  # the carried text part, the fresh VAE, SigLIP and transformers beside it
      [ -f "$HUB/lllyasviel/FramePackI2V_HY/config.json" ] || { mkdir -p "$HUB" && cp -r .demo/text/. "$HUB/" && python3 demo/build.py "$HUB" --part weights; } ;;
    data)
      [ -f "$DATA/train/clip-$(printf %05d $((CLIPS - 1))).mp4" ] || python3 demo/data.py "$DATA" --clips "$CLIPS" --workers "$WORKERS" ;;
    vae)
      python3 demo/train_vae.py "$HUB" "$DATA" --run "$RUNS/vae" --minutes "$(python3 -c "print($VAE_S / 60)")" --workers "$WORKERS" ;;
    vae-export)  # scaling factor, held-out PSNR, float16 weights into the hub (the cache keys change with them)
      python3 demo/train_vae.py "$HUB" "$DATA" --run "$RUNS/vae" --minutes 0 --export --workers 0 | tee "$OUT/vae.json" ;;
    cache)  # CACHE_JOBS processes over disjoint shares of the clips (entries are keyed by content, so training finds them all)
      pids=()
      for ((k = 0; k < CACHE_JOBS; k++)); do
        share="$DATA/share-$k" i=0; mkdir -p "$share"
        for clip in "$DATA"/train/*.mp4; do
          if ((i++ % CACHE_JOBS == k)); then ln -sf "$PWD/${clip%.mp4}".{mp4,txt,json} "$share/"; fi
        done
        fpgen finetune "$share" --cache-only --model-dir "$HUB" --size 128x128 --window 9 --cache-dir "$CACHE" --device "$DEVICE" --json & pids+=($!)
      done
      for pid in "${pids[@]}"; do wait "$pid"; done ;;
    train)  # the inverted (FramePack) and forward (F1) layouts at once on the one GPU, stopped with a checkpoint before the limit
      pids=()
      for model in $MODELS; do
        run="$RUNS/$model"; again=(); [ -f "$run/run.json" ] && again=(--resume)
        timeout -s INT "$(left "$EXPORT_S")" python3 -m fpgen finetune "$DATA/train" -o "$run" --model "$model" "${TRAIN[@]}" "${again[@]}" \
          > "$RUNS/$model.out" 2> "$RUNS/$model.err" &
        pids+=($!)
      done
      for pid in "${pids[@]}"; do wait "$pid" || [ $? -eq 124 ]; done  # 124: stopped at the limit (timeout), checkpoint kept
      for model in $MODELS; do tail -n 2 "$RUNS/$model.err"; cat "$RUNS/$model/log.jsonl" 2>/dev/null || true; done ;;
    export)  # the runs' EMA weights into the hub (bf16, shards under 5 MB); the whole hub back through $OUT in 15 MB parts
      for model in $MODELS; do
        order=inverted; [ "$model" = framepack-f1 ] && order=forward
        if [ ! -f "$RUNS/$model/config.json" ]; then  # stopped by the time limit: finish at its last checkpoint (writes the EMA weights)
          last=$(ls "$RUNS/$model/checkpoints" | sort | tail -n 1)
          MAX_STEPS=$((10#${last#step-})) MODELS=$model BUDGET=$(left) bash "$0" train
        fi
        python3 demo/build.py "$HUB" --part export --run "$RUNS/$model" --order "$order"
        cp "$RUNS/$model/log.jsonl" "$OUT/$model.log.jsonl" 2>/dev/null || true
      done
      untrained=(); [[ " $MODELS " == *" framepack-f1 "* ]] || untrained=(--exclude lllyasviel/FramePack_F1_I2V_HY_20250503)
      tar -C "$HUB" "${untrained[@]}" -cf - . | split -b 15m - "$OUT/hub.tar.part-" ;;
    all)  # everything in one call; the clips render on the CPU while the VAE trains
      bash "$0" weights
      WORKERS=$((WORKERS / 2)) bash "$0" data > "$RUNS/data.log" 2>&1 & data=$!
      BUDGET=$((BUDGET - SECONDS)) WORKERS=$((WORKERS / 2)) bash "$0" vae
      wait "$data" || { cat "$RUNS/data.log"; exit 1; }
      BUDGET=$((BUDGET - SECONDS)) bash "$0" vae-export cache train export ;;
    *) echo "unknown stage $stage (all, or weights, data, vae, vae-export, cache, train, export)"; exit 2 ;;
  esac
done
