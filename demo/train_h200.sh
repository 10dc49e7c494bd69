#!/usr/bin/env bash
# The demo model's training on one H200, in device calls of under 10 minutes (the machine stays warm only 30 s
# after a call, so each call starts from what it carries). Round 2 of the shipped demo was made by (demo/README.md):
#
#   BUDGET=465 VAE_S=90 EXPORT_S=50 MODELS="framepack framepack-f1" bash benchmarks/on_device.sh bash demo/train_h200.sh all
#
# `all`: the hub from the shipped demo (INIT=shipped, build.py --part unpack) or fresh (INIT=fresh); the clips
# rendered (CPU) while the VAE trains (GPU) for VAE_S seconds; vae-export; the cache; the transformers of MODELS
# at once until EXPORT_S seconds before BUDGET; export. `more`: the same from a carried .demo/hub, without the VAE;
# `more-decoder`: `more` while the VAE's decoder trains beside it (encoder frozen), returned as $OUT/vae.tar (VAE_LR, VAE_WORKERS).
# GROW="4 12" deepens the transformers of MODELS to 4 double and 12 single blocks first (same function; `grow`).
# BUDGET counts from the script's start: keep it ~35 s under the call's limit (the install and import check run first).
# MODELS: framepack (inverted), framepack-f1 (forward); a "-short" suffix trains that order with --history 1,0,0
# (the drift study's short-history cells) from the hub's transformer into HUB_SHORT. Each run starts from the
# hub's transformer of its order with a fresh optimizer and writes its EMA weights back.
# Stages also run alone, in the order of `all`. Carry (64 MiB in all): .whl (diffusers 0.42.1 and imageio-ffmpeg
# 0.6.0 unpacked as .tar.xz, typer, rich, click, pydantic and their small dependencies), .demo/data/stills
# (`make demo-data CLIPS=0`), and for `more` .demo/hub (what the last call sent back). src/fpgen/demo_model is
# the shipped demo INIT=shipped starts from.
# What comes back: $OUT/hub.tar.part-* (cat hub.tar.part-* | tar -x -C .demo: hub/ or hub-short/, the ones MODELS trained), $OUT/vae.json
# and $OUT/<run>.log.jsonl; `python demo/build.py .demo/hub --part package` then writes the package's copy.
set -euo pipefail
BUDGET=${BUDGET:-465}             # seconds the script may use (the device stops the call at its limit, 600 s at most)
HUB=.demo/hub HUB_SHORT=.demo/hub-short DATA=.demo/data RUNS=.demo/runs CACHE=.demo/cache
CLIPS=${CLIPS:-1000} MAX_STEPS=${MAX_STEPS:-100000} BATCH=${BATCH:-128} VAE_S=${VAE_S:-90} EXPORT_S=${EXPORT_S:-50} WORKERS=${WORKERS:-14}
SEED=${SEED:-0}  # of the training clips (demo/data.py --seed)
MODELS=${MODELS:-framepack} CACHE_JOBS=${CACHE_JOBS:-6} INIT=${INIT:-shipped} LR=${LR:-3e-4} DEVICE=${DEVICE:-cuda}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { echo $((BUDGET - SECONDS - ${1:-0})); }
fpgen() { python3 -m fpgen "$@"; }
mkdir -p "$RUNS" "${OUT:-/tmp/out}"
TRAIN=(--full --device "$DEVICE" --size 128x128 --window 9 --cache-dir "$CACHE" --cache-in-ram --batch-size "$BATCH"
       --lr "$LR" --warmup-steps 100 --lr-scheduler constant --max-steps "$MAX_STEPS" --shift 2 --guidance 1
       --no-gradient-checkpointing --ema ${EMA:-0.995} --caption-dropout 0.1 --save-every 250 --keep-checkpoints 1 --log-every 25 --json)
run_of() { case $1 in *-short) echo "${1%-short} $HUB_SHORT 1,0,0" ;; *) echo "$1 $HUB 1,2,16" ;; esac; }  # model, hub it is written to, history
order_of() { [[ $1 == framepack-f1* ]] && echo forward || echo inverted; }

for stage in "$@"; do
  echo "== $stage ($(left) s left)"
  case $stage in
    weights)  # the hub to train: the shipped demo's parts (both orders start from its transformer), or fresh ones beside the carried text part
      if [ ! -f "$HUB/lllyasviel/FramePackI2V_HY/config.json" ]; then
        mkdir -p "$HUB"
        if [ "$INIT" = shipped ]; then python3 demo/build.py "$HUB" --part unpack; else cp -r .demo/text/. "$HUB/" && python3 demo/build.py "$HUB" --part weights; fi
      fi
      mkdir -p "$HUB_SHORT/lllyasviel" && ln -sfn ../hub/hunyuanvideo-community "$HUB_SHORT/" && ln -sfn ../../hub/lllyasviel/flux_redux_bfl "$HUB_SHORT/lllyasviel/" ;;
    data)
      [ -f "$DATA/train/clip-$(printf %05d $((CLIPS - 1))).mp4" ] || python3 demo/data.py "$DATA" --clips "$CLIPS" --seed "$SEED" --workers "$WORKERS" ;;
    vae)  # the whole VAE (encoder and decoder)
      python3 demo/train_vae.py "$HUB" "$DATA" --run "$RUNS/vae" --minutes "$(python3 -c "print($VAE_S / 60)")" --workers "$WORKERS" ;;
    grow)  # the hub's transformers of MODELS deepened to GROW="DOUBLE SINGLE" blocks, computing the same (build.py --part grow; once)
      read -r double single <<< "$GROW"
      for name in $MODELS; do
        read -r model hub history <<< "$(run_of "$name")"
        python3 demo/build.py "$HUB" --part grow --order "$(order_of "$model")" --double-layers "$double" --single-layers "$single"
      done ;;
    decoder)  # the VAE's decoder alone (latents, cache and transformers unchanged) until EXPORT_S + 20 s before BUDGET, back as $OUT/vae.tar (one file: $OUT returns few)
      python3 demo/train_vae.py "$HUB" "$DATA" --run "$RUNS/decoder" --decoder-only --lr "${VAE_LR:-2e-4}" --workers "${VAE_WORKERS:-8}" \
        --minutes "$(python3 -c "print($(left $((EXPORT_S + 20))) / 60)")" --export --export-dir "$RUNS/decoder/vae" > "$OUT/decoder.log" 2>&1 && tar -C "$RUNS/decoder" -cf "$OUT/vae.tar" vae
      tail -n 1 "$OUT/decoder.log" ;;
    vae-export)  # scaling factor, held-out PSNR, float16 weights into the hub (the cache keys change with them)
      python3 demo/train_vae.py "$HUB" "$DATA" --run "$RUNS/vae" --minutes 0 --export --workers 0 | tee "$OUT/vae.json" ;;
    cache)  # CACHE_JOBS processes over disjoint shares of the clips (entries are keyed by content, so training finds them all)
      pids=()
      for ((k = 0; k < CACHE_JOBS; k++)); do
        share="$DATA/share-$k" i=0; mkdir -p "$share"
        for clip in "$DATA"/train/*.mp4; do
          if ((i++ % CACHE_JOBS == k)); then ln -sf "$PWD/${clip%.mp4}".{mp4,txt,json} "$share/"; fi
        done
        OMP_NUM_THREADS=2 fpgen finetune "$share" --cache-only --model-dir "$HUB" --size 128x128 --window 9 --cache-dir "$CACHE" --device "$DEVICE" --json > /dev/null & pids+=($!)
      done
      for pid in "${pids[@]}"; do wait "$pid"; done ;;
    train)  # the runs of MODELS at once on the one GPU, each stopped with a checkpoint before the limit
      pids=()
      for name in $MODELS; do
        read -r model hub history <<< "$(run_of "$name")"
        run="$RUNS/$name"; again=(); [ -f "$run/run.json" ] && again=(--resume)
        OMP_NUM_THREADS=4 timeout -s INT "$(left "$EXPORT_S")" python3 -m fpgen finetune "$DATA/train" -o "$run" --model "$model" --model-dir "$HUB" \
          --history "$history" "${TRAIN[@]}" "${again[@]}" > "$RUNS/$name.out" 2> "$RUNS/$name.err" &
        pids+=($!)
      done
      for pid in "${pids[@]}"; do wait "$pid" || [ $? -eq 124 ]; done  # 124: stopped at the limit (timeout), checkpoint kept
      for name in $MODELS; do tail -n 2 "$RUNS/$name.err"; tail -n 2 "$RUNS/$name/log.jsonl" 2>/dev/null || true; done ;;
    export)  # the runs' EMA weights (a run stopped by the limit: its last checkpoint's) into their hubs (bf16, shards under 5 MB); the hubs written back through $OUT in 15 MB parts
      hubs=()
      for name in $MODELS; do
        read -r model hub history <<< "$(run_of "$name")"
        python3 demo/build.py "$hub" --part export --run "$RUNS/$name" --order "$(order_of "$model")"
        cp "$RUNS/$name/log.jsonl" "$OUT/$name.log.jsonl" 2>/dev/null || true
        [[ " ${hubs[*]} " == *" ${hub#.demo/} "* ]] || hubs+=("${hub#.demo/}")
      done
      tar -C .demo -cf - "${hubs[@]}" | split -b 15m - "$OUT/hub.tar.part-" ;;  # only the hubs trained: both at once exceed the 64 MiB that comes back
    eval)  # on the GPU: one section per held-out clip against the truth, and the drift study (12 sections), from the hubs
      python3 benchmarks/demo_eval.py --model-dir "$HUB" --device cuda --clips 36 --wrong-captions 8 --out "$OUT/demo-eval.json" --overwrite 2>&1 | tail -n 3
      python3 benchmarks/drift.py --models "$HUB" --short-models "$HUB_SHORT" --stills "$DATA/stills" --device cuda --seeds ${DRIFT_SEEDS:-0,1} \
        --paths ${DRIFT_PATHS:-pan,wobble,zoom} --out "$OUT/drift.json" --overwrite 2>&1 | tail -n 3 ;;
    all)  # the first call: everything, the clips rendered on the CPU while the whole VAE trains
      bash "$0" weights
      WORKERS=$((WORKERS / 2)) bash "$0" data > "$RUNS/data.log" 2>&1 & data=$!
      BUDGET=$((BUDGET - SECONDS)) WORKERS=$((WORKERS / 2)) bash "$0" vae
      wait "$data" || { cat "$RUNS/data.log"; exit 1; }
      BUDGET=$((BUDGET - SECONDS)) bash "$0" vae-export continue ;;
    more-decoder)  # `more` with the decoder training beside it on the same GPU
      BUDGET=$((BUDGET - SECONDS)) bash "$0" weights ${GROW:+grow}
      BUDGET=$((BUDGET - SECONDS)) bash "$0" decoder & decoder=$!
      BUDGET=$((BUDGET - SECONDS)) bash "$0" continue
      wait "$decoder" ;;
    more)  # a later call, from the carried hub
      BUDGET=$((BUDGET - SECONDS)) bash "$0" weights ${GROW:+grow} continue ;;
    continue)  # the clips (if not rendered yet), the cache and the transformers, then the export
      BUDGET=$((BUDGET - SECONDS)) bash "$0" data cache train export ;;
    *) echo "unknown stage $stage (all, more, more-decoder, or weights, grow, data, vae, decoder, vae-export, cache, train, export, eval)"; exit 2 ;;
  esac
done
