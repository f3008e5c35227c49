"""Does training learn? Phantoms -> store -> each model with the demo preset -> test-split scores.

End to end on a BraTS-layout phantom dataset: write the phantom cases, ingest them
(patient-grouped split), train every model on fold 0 with the ``demo`` preset, then reload each
run's ``model.pt`` with ``load_trained`` and score it on the fold's test split (accuracy and
weighted F1, scikit-learn). Prints one table row per model and seed, with the training wall time.

With ``--store`` it trains on an existing slice store instead (no phantoms are written), and
``--preset``, ``--image-size``, ``--width`` and ``--batch-size`` replace the demo preset's values, e.g.
the paper settings at the networks' default widths on a GPU. ``--set FIELD=VALUE`` replaces any other
training field (JSON values; ``augment={"rotation": 15, "flip_p": 0.5}``, or ``augment=null`` for
none), ``--option MODEL:KEY=VALUE`` adds a network option for one model, and ``--dice`` also
writes the test and validation heatmaps and prints the test split's median Dice with the paper's
offset and with the offset chosen on the validation masks (``auto``). ``--seed 0,1,2`` trains each
model once per seed and prints the spread. ``benchmarks/results/LEARNING.md`` was made this way.

Usage::

    .venv/bin/python benchmarks/learning.py --work TMP/gpseg-learning [--cases 20] [--size 64]
        [--models gp-unet,resnext50] [--epochs 12]
    .venv/bin/python benchmarks/learning.py --store demo/stores/brats.zarr --models gp-shuffleunet \
        --option gp-shuffleunet:blur=true --seed 1 --dice   # one LEARNING.md row
    .venv/bin/python benchmarks/learning.py --store demo/stores/brats.zarr --models gp-unet --seed 0,1,2 --dice
                                                            # the spread over three seeds
    python benchmarks/learning.py --store demo/stores/brats.zarr --preset paper --epochs 60 \
        --full-width --models gp-unet,gp-reconresnet,gp-shuffleunet      # on a GPU

TMP: the temporary folder (``tempfile.gettempdir()``: $TMPDIR, else /tmp).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from gpmodels.augment import AugmentConfig
from gpmodels.data import SliceDataModule, split_indices
from gpmodels.evaluation import default_threshold, evaluate_heatmaps
from gpmodels.heatmaps import generate_heatmaps
from gpmodels.nets import MODEL_NAMES
from gpmodels.threshold_config import ThresholdConfig
from gpmodels.train_config import preset_config
from gpmodels.training import load_trained, train
from gpseg.options import parse_model_options, parse_options
from storage.store import open_store


def make_store(work: Path, cases: int, size: int, seed: int) -> Path:
    """The phantom store (written once; reused when present)."""
    from storage.ingest import ingest_brats  # noqa: PLC0415 (not needed with --store)
    from storage.ingest_config import IngestConfig  # noqa: PLC0415
    from storage.phantoms import write_brats_phantoms  # noqa: PLC0415

    store = work / f"brats-{cases}x{size}.zarr"
    if not store.exists():
        source = work / f"brats-{cases}x{size}"
        shutil.rmtree(source, ignore_errors=True)
        write_brats_phantoms(source, cases=cases, size=size, seed=seed)
        ingest_brats(source, store, IngestConfig(workers=0))
    return store


def evaluate(run_dir: Path, store: Path, fold: int) -> tuple[float, float]:
    """Accuracy and weighted F1 of a run's ``model.pt`` on the fold's test split."""
    net, run = load_trained(run_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = net.to(device).eval()
    data = SliceDataModule(str(store), fold, batch_size=32, image_size=run.image_size, augment=None)
    data.setup("test")
    predictions, labels = [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            batch = data.transform(batch, training=False)
            predictions.append(net(batch["image"].to(device)).argmax(dim=1).cpu().numpy())
            labels.append(batch["label"].numpy())
    y_true, y_pred = np.concatenate(labels), np.concatenate(predictions)
    return accuracy_score(y_true, y_pred), f1_score(y_true, y_pred, average="weighted")


def median_dice(run_dir: Path, model: str) -> tuple[float, float]:
    """Test-split median Dice with the paper's offset and with ``auto`` (writes test and val heatmaps)."""
    for split in ("test", "val"):
        generate_heatmaps(run_dir, split, posthoc=0)
    test = run_dir / "heatmaps" / "test.zarr"
    paper = evaluate_heatmaps(test, default_threshold(model))["segmentation"]["dice"]["median"]
    try:
        auto = evaluate_heatmaps(test, ThresholdConfig(offset="auto"))["segmentation"]["dice"]["median"]
    except ValueError as exc:  # e.g. no validation slice predicted as a tumour class
        print(f"{model}: no auto offset: {exc}")
        auto = float("nan")
    return paper, auto


def training_fields(items: list[str]) -> dict:
    """``--set`` items as TrainConfig fields (``augment`` given as a JSON object)."""
    fields = parse_options(items)
    if isinstance(fields.get("augment"), dict):
        fields["augment"] = AugmentConfig(**fields["augment"])
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gpseg-learning",
                        help="Working folder (default: TMP/gpseg-learning).")
    parser.add_argument("--cases", type=int, default=20, help="Phantom cases.")
    parser.add_argument("--size", type=int, default=64, help="Phantom in-plane size.")
    parser.add_argument("--models", default=",".join(MODEL_NAMES), help="Comma-separated model names.")
    parser.add_argument("--epochs", type=int, default=None, help="Override the demo preset's epochs.")
    parser.add_argument("--seed", default="0",
                        help="Training seed, or several comma-separated (e.g. 0,1,2): each model is trained once "
                             "per seed and a spread line is printed. The first also seeds the phantoms.")
    parser.add_argument("--store", type=Path, default=None, help="Train on this store; no phantoms are written.")
    parser.add_argument("--preset", default="demo", choices=("demo", "paper"), help="Training preset.")
    parser.add_argument("--image-size", type=int, default=None, help="Override the preset's training size.")
    parser.add_argument("--batch-size", type=int, default=None, help="Override the preset's batch size.")
    parser.add_argument("--width", type=int, default=None, help="Width of the GP networks.")
    parser.add_argument("--full-width", action="store_true",
                        help="The GP networks' default widths (the paper's), not the preset's.")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="Another training field, e.g. lr=0.001 (repeatable).")
    parser.add_argument("--option", action="append", default=[], metavar="MODEL:KEY=VALUE",
                        help="A network option of one model, e.g. gp-shuffleunet:pool=features (repeatable).")
    parser.add_argument("--dice", action="store_true", help="Also write heatmaps and print median Dice.")
    args = parser.parse_args()
    fields = training_fields(args.set)
    options = parse_model_options(args.option)

    seeds = [int(seed) for seed in args.seed.split(",")]
    store = args.store or make_store(args.work, args.cases, args.size, seeds[0])
    rows = []
    for model in args.models.split(","):
        for seed in seeds:
            rows.append((model, seed, *train_and_score(args, store, model, seed, fields, options)))

    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{torch.get_num_threads()} CPU threads"
    print(f"\nstore {store} (fold 0 test split), {args.preset} preset, {where}")
    print(f"settings {fields or 'preset'}, options {options or 'preset'}")
    print(f"{'model':<16}{'seed':>5}{'accuracy':>10}{'weighted F1':>13}{'F1 (Lightning)':>16}{'seconds':>9}"
          f"{'steps':>7}{'Dice':>7}{'auto Dice':>11}")
    for model, seed, accuracy, f1, lightning_f1, seconds, steps, dice, auto in rows:
        print(f"{model:<16}{seed:>5d}{accuracy:>10.3f}{f1:>13.3f}{lightning_f1:>16.3f}{seconds:>9.0f}{steps:>7d}"
              f"{dice:>7.3f}{auto:>11.3f}")
    if len(seeds) > 1:
        for model in args.models.split(","):
            mine = np.array([row[2:] for row in rows if row[0] == model], dtype=float)
            dice = f", Dice {spread(mine[:, 5])}, auto Dice {spread(mine[:, 6])}" if args.dice else ""
            print(f"{model}: over seeds {args.seed}: weighted F1 {spread(mine[:, 1])}{dice}")


def train_and_score(args: argparse.Namespace, store: Path, model: str, seed: int, fields: dict,
                    options: dict) -> tuple[float, float, float, float, int, float, float]:
    """Train one model with one seed; (accuracy, F1, Lightning's F1, seconds, steps, Dice, auto Dice)."""
    out = args.work / "runs" / model
    shutil.rmtree(out, ignore_errors=True)
    settings = {"epochs": args.epochs, "seed": seed, "image_size": args.image_size,
                "batch_size": args.batch_size, "width": args.width, **fields}
    config = preset_config(args.preset, str(store), model, str(out), model_options=options.get(model, {}),
                           **settings)
    # preset_config keeps the preset's value for None, so an explicit ``--set augment=null``
    # (no augmentation) or ``--full-width`` (width None) is applied afterwards.
    nulls = {key: None for key, value in fields.items() if value is None}
    if args.full_width:
        nulls["width"] = None
    config = dataclasses.replace(config, **nulls)
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    accuracy, f1 = evaluate(out, store, config.fold)
    dice = median_dice(out, model) if args.dice else (float("nan"), float("nan"))
    slices = len(split_indices(open_store(str(store)), config.fold, "train")) * config.epochs
    print(f"{model} seed {seed}: acc {accuracy:.3f}, weighted F1 {f1:.3f}, {seconds:.0f} s "
          f"({slices / seconds:.0f} training slices/s including validation)", flush=True)
    return accuracy, f1, result.test_metrics["test_f1"], seconds, result.global_step, *dice


def spread(values: np.ndarray) -> str:
    """``mean (min to max)`` of per-seed values."""
    return f"{np.nanmean(values):.3f} ({np.nanmin(values):.3f} to {np.nanmax(values):.3f})"


if __name__ == "__main__":
    main()
