#!/usr/bin/env bash
# One GPU session's checks, in the order of their value; each part has its own time limit so that a
# slow one cannot starve the others. Logs go to $OUT (or ./gpu-out).
#
#   benchmarks/gpu_suite.sh STORE [WHEELS]
#   PARTS=throughput_b64,throughput_b64_fft benchmarks/gpu_suite.sh STORE [WHEELS]   # some parts only
#   PARTS=learning_seeds benchmarks/gpu_suite.sh STORE [WHEELS]   # the learning targets over seeds 0, 1, 2
#   PARTS=occlusion benchmarks/gpu_suite.sh STORE [WHEELS]   # occlusion per forward-pass batching on CUDA
#   PARTS=loader benchmarks/gpu_suite.sh STORE [WHEELS]   # uncached loader slices/s with 0, 4, 8 workers
#                                                         # (on 8 phantom cases at 240 px it writes itself)
#
# STORE: a slice store for the end-to-end Lightning run (e.g. demo/stores/brats.zarr). Slice stores are
# ignored by git (*.zarr/), so the device tool's `carry` must name it, and the wheels folder, e.g.
# carry [".gpu/brats.zarr", ".whl"]; at most 64 MiB travel, and at most 8 files come back from $OUT
# (gpu.txt and one per part).
# WHEELS: a folder of wheels for what the GPU machine's Python lacks (zarr, numcodecs, donfig,
# google-crc32c, captum, nibabel), installed into /tmp/site. `bash benchmarks/gpu_prepare.sh` makes both
# .gpu/brats.zarr and .whl here, at no device time.
#
# Exit status: the number of parts that failed or ran out of time (0: all selected parts ran to the end).
set -uo pipefail
STORE=${1:?usage: gpu_suite.sh STORE [WHEELS]}
STORE=$(realpath -m "$STORE")   # paths as the caller gave them, before the cd below
WHEELS=${2:+$(realpath -m "$2")}
OUT=$(realpath -m "${OUT:-gpu-out}")
cd "$(dirname "$0")/.." || exit 1   # the repository root, whatever the caller's folder
KNOWN=throughput_b64,throughput_b64_fft,sinc,compile_b64,heatmaps,occlusion,throughput_b8,learning,loader,learning_seeds
PARTS=${PARTS:-throughput_b64,throughput_b64_fft,sinc,heatmaps,learning}  # at most 420 s; compile_b64 on request
for name in ${PARTS//,/ }; do
    [[ ",$KNOWN," == *",$name,"* ]] || { echo "PARTS: unknown part '$name' (known: $KNOWN)" >&2; exit 1; }
done
if [[ ",$PARTS," =~ ,(learning|learning_seeds), && ! -d "$STORE" ]]; then
    echo "$STORE: no such slice store (the learning parts read it; carry it to the device)" >&2; exit 1
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [[ -n "$WHEELS" ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision, pytorch_lightning as pl; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'lightning', pl.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
[[ ${PIPESTATUS[0]} == 0 ]] || { echo "torch cannot use a CUDA device here" >&2; exit 1; }
imports="captum, zarr, nibabel, skimage, sklearn, numba, pandas, matplotlib, gpmodels.evaluation, gpmodels.heatmaps"
python3 -c "import $imports, storage.store, storage.ingest" \
    || { echo "a package the benchmarks import is missing: add its wheel to WHEELS" >&2; exit 1; }

failed=()
part() {  # part NAME SECONDS COMMAND...  (skipped unless NAME is in $PARTS)
    local name=$1 seconds=$2; shift 2
    [[ ",$PARTS," == *",$name,"* ]] || return 0
    echo "=== $name (limit ${seconds}s)"
    rm -f "$OUT/$name.txt"   # the summary below shows this run's parts only
    local started=$SECONDS
    timeout -k 10 "$seconds" "$@" 2>&1 | tee "$OUT/$name.txt"   # -k: a part that ignores SIGTERM is killed
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc, $((SECONDS - started)) s"
    ((rc == 0)) || failed+=("$name (exit $rc)")
}

# In order of value: the GP-UNet target (sinc by matrix products, the CUDA default, against the FFT in the
# same call), the up-sampling alone, heatmaps, learning (the default parts take at most 420 s); compiled steps
# (PARTS=compile_b64, alone: up to 240 s) and batch 8 on request.
part throughput_b64 90 python3 benchmarks/train_throughput.py --device cuda --batch 64 --steps 10 --warmup 3
part throughput_b64_fft 60 python3 benchmarks/train_throughput.py --device cuda --batch 64 --steps 10 --warmup 3 \
    --sinc-method fft --models gp-unet,gp-reconresnet
part sinc 40 python3 benchmarks/sinc_upsample.py --device cuda --seconds 1 --cases 64,128,60 64,64,120 16,64,256
part compile_b64 240 python3 benchmarks/train_throughput.py --device cuda --batch 64 --steps 10 --warmup 3 --compile \
    --models gp-unet,gp-reconresnet,gp-shuffleunet
part heatmaps 60 python3 benchmarks/heatmaps.py --device cuda --batch 64 --batches 5 --rounds 2
# On request (PARTS=occlusion): the CUDA target of automatic occlusion batching (64 slices per pass is a guess).
part occlusion 120 python3 benchmarks/occlusion.py --device cuda --size 240 --slices 2 --preset paper --ppe auto,8,128
part throughput_b8 90 python3 benchmarks/train_throughput.py --device cuda --batch 8 --steps 20 --warmup 5
part learning 170 python3 benchmarks/learning.py --store "$STORE" --work /tmp/gpseg-learning --preset paper \
    --epochs 50 --full-width --models gp-unet,gp-reconresnet,gp-shuffleunet
# On request (PARTS=loader): can the loader feed the GPU from a store too large to cache? 240-px phantoms written
# here (a 240-px store big enough is too big to carry); batch 8 so that 8 cases (about 400 training slices, 50
# batches) hold the 16 batches 8 workers fetch ahead plus the 10 timed (4 cases gave 111 slices: too few).
part loader 150 python3 benchmarks/loader.py --cases 8 --workers 0,4,8 --batch 8 --batches 10 --rounds 2
# On request (PARTS=learning_seeds, alone: up to 7 minutes): the learning targets over three seeds, with Dice.
part learning_seeds 420 python3 benchmarks/learning.py --store "$STORE" --work /tmp/gpseg-learning-seeds \
    --preset paper --epochs 50 --full-width --models gp-unet,gp-reconresnet,gp-shuffleunet --seed 0,1,2 --dice
echo; echo "=== summary (this run's parts)"
for name in ${PARTS//,/ }; do
    f="$OUT/$name.txt"
    [[ -f "$f" ]] || continue
    echo "--- $name"
    case $name in
        # the rows as each model finished (a part cut short by its limit has some), each once, under the header
        throughput*|compile*) rows="^(gp-unet|gp-reconresnet|gp-shuffleunet|inceptionv3|resnext50) "
                              grep -m1 "^model" "$f"; grep -E "$rows" "$f" | awk '!seen[$0]++' ;;
        learning*) grep -A12 "^model" "$f"; grep -h "slices/s" "$f" ;;
        loader) grep -h "slices/s" "$f" ;;
        *) cat "$f" ;;
    esac
done
if ((${#failed[@]})); then echo "=== failed: ${failed[*]}"; else echo "=== every selected part ran to the end"; fi
exit ${#failed[@]}
