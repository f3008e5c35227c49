"""Train in a child Python process: how a Prefect or Dask task trains one model on several devices.

Lightning's DDP launcher starts ranks 1..N-1 by running the current command line again. Inside a
Prefect worker, a Dask worker or the in-process main job that command line is not a training
command, so :func:`gpmodels.training.train` with ``devices > 1`` cannot be called there directly.
:func:`train_in_subprocess` writes the configuration to ``RUN_DIR/train_request.json`` and runs::

    python -m gpmodels.train_process RUN_DIR/train_request.json RUN_DIR/train_result.json

whose command line the launcher can repeat for every rank; rank 0 writes the result, which is read
back into a :class:`gpmodels.training.TrainResult`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gpmodels.files import write_text_atomic
from gpmodels.train_config import RunConfig, TrainConfig
from gpmodels.training import TrainResult, train

REQUEST_FILE = "train_request.json"
RESULT_FILE = "train_result.json"


def result_to_dict(result: TrainResult) -> dict:
    """JSON-ready form of a :class:`TrainResult`."""
    return {"run_dir": str(result.run_dir), "run": result.run.to_dict(), "global_step": result.global_step,
            "start_step": result.start_step, "best_val_loss": result.best_val_loss,
            "test_metrics": result.test_metrics, "seconds": result.seconds}


def result_from_dict(values: dict) -> TrainResult:
    """Inverse of :func:`result_to_dict`."""
    return TrainResult(run_dir=Path(values["run_dir"]), run=RunConfig.from_dict(values["run"]),
                       global_step=int(values["global_step"]), start_step=int(values["start_step"]),
                       best_val_loss=values["best_val_loss"], test_metrics=dict(values["test_metrics"]),
                       seconds=float(values["seconds"]))


def train_in_subprocess(config: TrainConfig, log: Path | None = None) -> TrainResult:
    """Run :func:`gpmodels.training.train` in a child process (``python -m gpmodels.train_process``).

    Args:
        config: the run's configuration; ``config.out`` is created if needed.
        log: file for the child's output (default: ``RUN_DIR/train_process.log``).

    Returns:
        The child's :class:`TrainResult`.

    Raises:
        RuntimeError: If the child exits with an error (the message names the log and quotes its end).
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    request, result_path = out / REQUEST_FILE, out / RESULT_FILE
    request.write_text(json.dumps(config.to_dict(), indent=2))
    result_path.unlink(missing_ok=True)
    log = log or out / "train_process.log"
    with open(log, "w") as sink:
        code = subprocess.call([sys.executable, "-m", "gpmodels.train_process", str(request), str(result_path)],
                               stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy())
    if code != 0 or not result_path.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{out}: training process exited with {code}; see {log}: {tail[0]}")
    return result_from_dict(json.loads(result_path.read_text()))


def main(argv: list[str]) -> int:
    """``python -m gpmodels.train_process REQUEST RESULT``; every DDP rank runs this."""
    if len(argv) != 2:
        print("usage: python -m gpmodels.train_process REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    config = TrainConfig.from_dict(json.loads(Path(argv[0]).read_text()))
    result = train(config)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        write_text_atomic(Path(argv[1]), json.dumps(result_to_dict(result), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
