"""What writing ``last.ckpt`` after every epoch costs: demo-preset trainings with ``checkpoint_every_s=0`` against
the default (60 s), side by side.

Each training runs in a fresh process, the two settings alternating, so that both see the same machine. Each
prints its training seconds, the checkpoint writes (``last.ckpt`` and ``best.ckpt``: how many, and the seconds
spent in them) and the test split's weighted F1, which must be the same for both settings (the weights are).
Without ``--store`` a BraTS-layout phantom store like the demo's (16 cases of 96 px) is written under ``--work``.

Usage::

    .venv/bin/python benchmarks/checkpoint_interval.py [--store demo/stores/brats.zarr]
        [--models resnext50,inceptionv3] [--rounds 2] [--every 60] [--work TMP/gpseg-checkpoints]

TMP: the temporary folder (``tempfile.gettempdir()``: $TMPDIR, else /tmp).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, sys, time
from pathlib import Path
from gpmodels import checkpoints
from gpmodels.train_config import preset_config
from gpmodels.training import train

spent = {}
save = checkpoints.RunDirCheckpointIO.save_checkpoint

def timed(self, checkpoint, path, storage_options=None):
    started = time.perf_counter()
    save(self, checkpoint, path, storage_options)
    count, seconds = spent.get(Path(path).name, (0, 0.0))
    spent[Path(path).name] = (count + 1, seconds + time.perf_counter() - started)

checkpoints.RunDirCheckpointIO.save_checkpoint = timed
store, model, out, every = sys.argv[1:5]
started = time.perf_counter()
result = train(preset_config("demo", store=store, model=model, out=out, fold=0, checkpoint_every_s=float(every)))
print(json.dumps({"seconds": time.perf_counter() - started, "writes": spent,
                  "f1": result.test_metrics.get("test_f1")}))
"""


def make_store(work: Path) -> Path:
    """A phantom store like the demo's BraTS one (written once; reused when present)."""
    from storage.ingest import ingest_brats
    from storage.ingest_config import IngestConfig
    from storage.phantoms import write_brats_phantoms

    store = work / "brats-16x96.zarr"
    if not store.exists():
        write_brats_phantoms(work / "brats", cases=16, size=96, seed=0)
        ingest_brats(work / "brats", store, IngestConfig())
    return store


def one_training(store: Path, model: str, out: Path, every: float) -> dict:
    """Train ``model`` into a new ``out`` in a fresh process; its JSON line as a dict."""
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", _CHILD, str(store), model, str(out), str(every)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{model} (checkpoint_every_s={every:g}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="slice store (default: phantoms written under --work)")
    parser.add_argument("--models", default="resnext50,inceptionv3", help="comma-separated networks")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of trainings per model")
    parser.add_argument("--every", type=float, default=60.0, help="checkpoint_every_s compared with 0")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gpseg-checkpoints",
                        help="work folder")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    store = args.store or make_store(args.work)
    print(f"store {store}; demo preset; checkpoint_every_s 0 (after every epoch) against {args.every:g}")
    print(f"{'model':<12} {'every':>5} {'train s':>8} {'last.ckpt':>14} {'best.ckpt':>14} {'F1':>6}")
    for model in args.models.split(","):
        totals: dict[float, float] = {0.0: 0.0, args.every: 0.0}
        for _ in range(args.rounds):
            for every in (0.0, args.every):
                row = one_training(store, model, args.work / "run", every)
                totals[every] += row["seconds"]
                writes = {name: f"{n} in {s:5.1f} s" for name, (n, s) in row["writes"].items()}
                print(f"{model:<12} {every:>5g} {row['seconds']:>8.1f} {writes.get('last.ckpt', '-'):>14} "
                      f"{writes.get('best.ckpt', '-'):>14} {row['f1']:>6.3f}", flush=True)
        print(f"{model}: training time with {args.every:g} s / with 0: {totals[args.every] / totals[0.0]:.3f}")


if __name__ == "__main__":
    main()
