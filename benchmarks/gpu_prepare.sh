#!/usr/bin/env bash
# Make what a GPU session's `benchmarks/gpu_suite.sh` needs, on this machine, before the device starts (it
# costs no device time): the BraTS phantom store `.gpu/brats.zarr` (16 cases at 96 px, as the demo's) and
# `.whl/`, the wheels of what the device's Python 3.12 lacks. Both are ignored by git and stay under the
# device tool's 64 MiB carry limit (about 12 MB and 13 MB). Then, with the device tool:
#
#   run  command: bash benchmarks/gpu_suite.sh .gpu/brats.zarr .whl   carry: [".gpu/brats.zarr", ".whl"]
#
# Usage: bash benchmarks/gpu_prepare.sh   (from anywhere; the venv of `./run.sh test` must exist)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/gpseg ]] || { echo ".venv/bin/gpseg: missing; run ./run.sh test once first" >&2; exit 1; }
export GX_ANALYTICS_ENABLED=false PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
phantoms=$(mktemp -d)
trap 'rm -rf "$phantoms"' EXIT
rm -rf .gpu/brats.zarr .whl
.venv/bin/gpseg synth brats "$phantoms" --cases 16 --size 96 --seed 0
.venv/bin/gpseg ingest brats "$phantoms" --out .gpu/brats.zarr --workers 0
# the versions of constraints.txt; nibabel is what ingestion (the loader part) reads NIfTI with
wheels=()
for name in zarr numcodecs donfig google-crc32c captum nibabel; do
    wheels+=("$(grep -i "^$name==" constraints.txt)")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wheels[@]}"
du -sh .gpu/brats.zarr .whl
