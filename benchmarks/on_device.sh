#!/usr/bin/env bash
# On the GPU box (no network): install the wheels carried in .whl/ and its subfolders (*.whl, or unpacked ones as *.tar.xz) beside its torch, then run "$@".
#   device run: bash benchmarks/on_device.sh python3 benchmarks/bench_step.py --out $OUT/step.json
set -euo pipefail
mkdir -p /tmp/site
mkdir -p .whl  # its subfolders may come in separate warm calls (demo/README: when the tree and all of .whl exceed the transfer)
mapfile -t wheels < <(find .whl -type f -name '*.whl')
if [ ${#wheels[@]} -gt 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
fi
mapfile -t packed < <(find .whl -type f -name '*.tar.xz')  # wheels unpacked and xz-compressed to fit the transfer
for archive in "${packed[@]}"; do tar -xJf "$archive" -C /tmp/site; done
if [ -d /tmp/site/imageio_ffmpeg/binaries ]; then chmod +x /tmp/site/imageio_ffmpeg/binaries/*; fi
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/fpgen-inductor
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
df -h /tmp | tail -1
python3 -c "import torch, transformers, diffusers; from fpgen.acceleration import inductor_options; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__, 'SiglipImageProcessorPil', hasattr(transformers, 'SiglipImageProcessorPil'), 'eager-rounding options', inductor_options(True))"
"$@"
