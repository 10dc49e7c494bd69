#!/usr/bin/env bash
# The demo model's training on one H200, in stages that each fit the device's 10-minute command limit.
# Run on the device through benchmarks/on_device.sh (it installs the carried wheels), stages in order:
#
#   bash benchmarks/on_device.sh bash demo/train_h200.sh data vae               # call 1: clips, VAE (~8 min)
#   bash benchmarks/on_device.sh bash demo/train_h200.sh vae-export cache train  # call 2: VAE out, cache, both transformers
#   bash benchmarks/on_device.sh bash demo/train_h200.sh train export            # call 3: both resumed, then exported to $OUT
#
# Carry in every call (64 MiB in all; inputs only, never written there): .whl (diffusers 0.42.1, imageio-ffmpeg 0.6.0),
# .demo/text (`python demo/build.py .demo/text --part text` here, about 8 MB) and .demo/data/stills (`make demo-data CLIPS=0`).
# Never carry .demo/hub: a carried path replaces the device's copy, which holds what was trained.
# Every stage skips what is done and continues what was stopped: a training stopped by the time limit
# (SIGINT, checkpoint written) goes on with --resume, the VAE from its checkpoint. The device keeps ignored
# files between calls only while it stays warm (30 minutes held at most): a fresh machine redoes the data
# and the VAE from the seeds (identical clips), so run the three calls in one lease.
set -euo pipefail
BUDGET=${BUDGET:-570}             # seconds this command may use (the device stops it at 600)
HUB=.demo/hub DATA=.demo/data RUNS=.demo/runs CACHE=.demo/cache
CLIPS=${CLIPS:-2000} MAX_STEPS=${MAX_STEPS:-4000} BATCH=${BATCH:-64}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((BUDGET - SECONDS - ${1:-0})); }
fpgen() { python3 -m fpgen "$@"; }
TRAIN=(--full --model-dir "$HUB" --size 128x128 --window 9 --cache-dir "$CACHE" --cache-in-ram --batch-size "$BATCH"
       --lr 3e-4 --warmup-steps 300 --lr-scheduler cosine --max-steps "$MAX_STEPS" --shift 2 --guidance 1
       --no-gradient-checkpointing --ema 0.999 --caption-dropout 0.1 --save-every 250 --keep-checkpoints 1 --log-every 50 --json)

for stage in "$@"; do
  echo "== $stage ($(left) s left)"
  case $stage in
    data)  # the carried text part, the fresh VAE, SigLIP and transformers beside it, then the clips
      [ -f "$HUB/lllyasviel/FramePackI2V_HY/config.json" ] || { mkdir -p "$HUB" && cp -r .demo/text/. "$HUB/" && python3 demo/build.py "$HUB" --part weights; }
      [ -f "$DATA/train/clip-$(printf %05d $((CLIPS - 1))).mp4" ] || python3 demo/data.py "$DATA" --clips "$CLIPS" --workers 14 ;;
    vae)
      python3 demo/train_vae.py "$HUB" "$DATA" --run "$RUNS/vae" --minutes "$(( $(left 30) / 60 ))" --workers 12 ;;
    vae-export)  # scaling factor, held-out PSNR, float16 weights into the hub (the cache keys change with them)
      python3 demo/train_vae.py "$HUB" "$DATA" --run "$RUNS/vae" --minutes 0 --export --workers 0 | tee "$OUT/vae.json" ;;
    cache)
      fpgen finetune "$DATA/train" --cache-only --model-dir "$HUB" --size 128x128 --window 9 --cache-dir "$CACHE" --device cuda --json ;;
    train)  # the inverted (FramePack) and forward (F1) layouts at once on the one GPU, stopped with a checkpoint before the limit
      pids=()
      for model in framepack framepack-f1; do
        run="$RUNS/$model"; again=(); [ -f "$run/run.json" ] && again=(--resume)
        timeout -s INT "$(left 40)" python3 -m fpgen finetune "$DATA/train" -o "$run" --model "$model" "${TRAIN[@]}" "${again[@]}" \
          > "$RUNS/$model.out" 2> "$RUNS/$model.err" &
        pids+=($!)
      done
      for pid in "${pids[@]}"; do wait "$pid" || [ $? -eq 130 ]; done  # 130: stopped at the limit, checkpoint kept
      tail -n 3 "$RUNS"/framepack*.err; tail -n 2 "$RUNS"/framepack/log.jsonl "$RUNS"/framepack-f1/log.jsonl ;;
    export)  # the finished runs' EMA weights into the hub (bf16, shards under 15 MB); the hub minus F1 back through $OUT
      # ($OUT takes 8 files of 16 MiB: a tar in 15 MB parts, ~50 MB; here: cat hub.tar.part-* | tar -x -C .demo/hub)
      python3 demo/build.py "$HUB" --part export --run "$RUNS/framepack" --order inverted
      python3 demo/build.py "$HUB" --part export --run "$RUNS/framepack-f1" --order forward
      tar -C "$HUB" --exclude 'lllyasviel/FramePack_F1_I2V_HY_20250503' -cf - . | split -b 15m - "$OUT/hub.tar.part-"
      tail -n 20 "$RUNS"/framepack/log.jsonl "$RUNS"/framepack-f1/log.jsonl > "$OUT/logs.txt" ;;
    export-f1)  # a separate call: F1's transformer (41 MB) alone, the same way
      tar -C "$HUB" -cf - lllyasviel/FramePack_F1_I2V_HY_20250503 | split -b 15m - "$OUT/f1.tar.part-" ;;
    *) echo "unknown stage $stage (data, vae, vae-export, cache, train, export, export-f1)"; exit 2 ;;
  esac
done
