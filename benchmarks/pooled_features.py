"""What a trained GP network's head sees: the globally max-pooled features per class, per split.

A GP network's logits are a 1×1 convolution of its last features after global max pooling
(``pool="features"``), or the maximum of the class maps (``pool="maps"``). So the pooled features
of a slice are all the class decision can use. For each split this prints, per true class, the mean
pooled value of every feature channel, the channels that never fire, and the confusion matrix of
the network's predictions (rows: true class, columns: predicted class).

It tells a run that has learnt a detector of the whole tumour (channels whose pooled value is many
times larger on tumour slices than on tumour-free ones) from a run that has not (every channel
about as large on tumour-free slices as on the class it never predicts). ``LEARNING.md``, fifth
round, compares two seeds of GP-UNet this way.

Usage::

    .venv/bin/python benchmarks/pooled_features.py RUN_DIR [--splits train,test] [--store PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import confusion_matrix

from gpmodels.data import SliceDataModule
from gpmodels.train_config import RunConfig
from gpmodels.training import load_trained


def pooled_features(net: torch.nn.Module, run: RunConfig, split: str, store: str | None = None,
                    batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled features, true labels and predictions of one split.

    Args:
        net: a trained GP network in eval mode, and ``run`` its configuration
            (:func:`gpmodels.training.load_trained`).
        run: see ``net``.
        split: ``train``, ``val`` or ``test`` of the run's fold (no augmentation, every slice).
        store: the slice store; default the one the run was trained on.
        batch_size: slices per forward pass.

    Returns:
        ``features`` float32 ``(N, F)`` (the maximum over H, W of each channel of the head's input),
        ``labels`` int64 ``(N,)``, ``predicted`` int64 ``(N,)``.

    Raises:
        ValueError: If the run's network has no GP head (a baseline).
    """
    if not hasattr(net, "head"):
        raise ValueError(f"{run.train.out}: {run.train.model} has no GP head; this looks at GP networks only")
    captured: list[torch.Tensor] = []
    hook = net.head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].amax(dim=(-2, -1))))
    data = SliceDataModule(store or run.store_path, run.train.fold, batch_size=batch_size,
                           image_size=run.image_size, augment=None)
    data.setup({"train": "fit", "val": "validate", "test": "test"}[split])
    labels, predicted = [], []
    try:
        with torch.no_grad():
            for batch in data.eval_dataloader(split):
                batch = data.transform(batch, training=False)
                predicted.append(net(batch["image"]).argmax(dim=1))
                labels.append(batch["label"])
    finally:
        hook.remove()
    return (torch.cat(captured).float().numpy(), torch.cat(labels).numpy(), torch.cat(predicted).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="Run directory of a GP model.")
    parser.add_argument("--splits", default="train,test", help="Comma-separated splits (train, val, test).")
    parser.add_argument("--store", default=None, help="Slice store (default: the run's).")
    args = parser.parse_args()
    unknown = [split for split in args.splits.split(",") if split not in ("train", "val", "test")]
    if unknown:
        parser.error(f"--splits: got {unknown}, expected some of train, val, test")
    try:
        net, run = load_trained(args.run)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    classes = run.classes
    np.set_printoptions(precision=2, suppress=True, linewidth=120)
    for split in args.splits.split(","):
        try:
            features, labels, predicted = pooled_features(net, run, split, args.store)
        except ValueError as exc:
            parser.error(str(exc))
        silent = np.flatnonzero(features.max(axis=0) <= 0)
        print(f"\n{split}: {len(labels)} slices, {features.shape[1]} feature channels, "
              f"never firing: {silent.tolist() or 'none'}")
        for k, name in enumerate(classes):
            mine = features[labels == k]
            print(f"  {name:<12} n={len(mine):<4} mean pooled feature per channel: "
                  f"{mine.mean(axis=0) if len(mine) else 'no slices'}")
        print("  confusion (rows true, columns predicted):")
        print(confusion_matrix(labels, predicted, labels=range(len(classes))))


if __name__ == "__main__":
    main()
