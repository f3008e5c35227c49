"""The Lightning module: one shared step for training, validation and test of any gpseg network.

The network is built outside (``gpmodels.nets.build_model``) and passed in, Lightning-examples
style. The loss is class-weighted cross-entropy (weights balanced on the training split); for
networks with an auxiliary classifier (InceptionV3's ``forward_with_aux``) the training loss is
``CE(logits) + aux_weight * CE(aux_logits)``, torchvision's convention with ``aux_weight = 0.4``.
Optimiser: Adam with L2 weight decay (the paper's training, README "Training, heatmaps, thresholds, report").

Logged: ``train_loss`` (the epoch mean of the batch losses); ``val_loss``, ``val_acc``, ``val_f1``
(weighted F1) per epoch; the same as ``test_*`` in testing. ``val_loss`` and ``test_loss`` are the
class-weighted cross-entropy of the whole split, ``sum(w_i l_i) / sum(w_i)`` over its slices, whatever
the batch size and the order of the slices (the best checkpoint is chosen on it).

Checkpoints also hold torch's global random state (key ``gpseg_rng``: the CPU generator and each
CUDA device's), which dropout draws from, so a run resumed from ``last.ckpt`` continues exactly as
the uninterrupted run would have. The sampling order and the augmentation have generators of their
own, restored by the data module.

References:
    Szegedy, C. et al., "Rethinking the Inception architecture for computer vision", CVPR 2016
    (auxiliary classifier). Kingma, D. P. and Ba, J., "Adam", ICLR 2015.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

_EVAL_STAGES = ("val", "test")
RNG_KEY = "gpseg_rng"
VAL_LOSS_KEY = "gpseg_val_loss"
"""A checkpoint's entry holding the validation loss of its epoch (absent without a validation split, and in
checkpoints written before gpseg kept it), so that a ``best.ckpt`` a killed attempt wrote carries its own score."""


def global_rng_state() -> dict[str, Any]:
    """torch's global random state: ``cpu`` (uint8 tensor) and ``cuda`` (one per visible device)."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore a :func:`global_rng_state` (CUDA states for as many devices as both sides have)."""
    torch.set_rng_state(state["cpu"])
    if torch.cuda.is_available():
        for device, device_state in enumerate(state.get("cuda", [])[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, device)


def weighted_cross_entropy(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """Class-weighted cross-entropy, the weighted mean over the batch.

    Equal to ``F.cross_entropy(logits, labels, weight=weights)``, except that a batch whose
    labels all have weight 0 (a class absent from the training split) gives 0 instead of NaN.

    Args:
        logits: float ``(B, K)``.
        labels: int64 ``(B,)``.
        weights: float ``(K,)``.

    Returns:
        A float32 scalar.
    """
    losses = F.cross_entropy(logits.float(), labels, reduction="none")
    sample_weights = weights[labels]
    return (losses * sample_weights).sum() / sample_weights.sum().clamp_min(torch.finfo(torch.float32).tiny)


class ClassifierModule(pl.LightningModule):
    """Trains a slice classifier with image-level labels.

    Args:
        net: the network; ``net(x)`` maps ``(B, C, H, W)`` to logits ``(B, K)``. If it has
            ``forward_with_aux(x) -> (logits, aux_logits | None)``, the auxiliary loss is added in
            training.
        class_weights: cross-entropy weight per class: K finite values >= 0 (a sequence or a float ``(K,)``
            array, e.g. :func:`gpmodels.data.balanced_class_weights`'s), K being the network's logits.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        aux_weight: weight of the auxiliary loss.
        run_config: the run's configuration as a plain dict (stored in checkpoints as
            hyperparameters; primitives only, so checkpoints load with ``weights_only=True``).
        channels_last: keep the network's weights and its input batches in channels-last
            (NHWC) memory, as cuDNN's mixed-precision convolutions prefer on GPUs. A speed setting:
            the values, the checkpoints' tensors (saved contiguous by ``save_weights``) and the
            results within float rounding are the same.

    Raises:
        ValueError: If ``class_weights`` is empty, negative or not finite, or a rate is out of range; at the first
            step, if the network gives another number of logits than ``class_weights`` has weights.
    """

    def __init__(self, net: nn.Module, class_weights: Sequence[float], lr: float = 1e-3,
                 weight_decay: float = 5e-4, aux_weight: float = 0.4,
                 run_config: dict[str, Any] | None = None, channels_last: bool = False) -> None:
        super().__init__()
        # plain floats: save_hyperparameters compares this frame's locals with ``==``, ambiguous for an array
        class_weights = tuple(float(w) for w in class_weights)
        weights = list(class_weights)
        if not weights or not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"class_weights: got {weights}, expected one finite weight >= 0 per class")
        if lr <= 0 or weight_decay < 0 or aux_weight < 0:
            raise ValueError(f"lr, weight_decay, aux_weight: got {lr}, {weight_decay}, {aux_weight}, "
                             "expected lr > 0 and the others >= 0")
        self.save_hyperparameters({"class_weights": weights, "lr": lr, "weight_decay": weight_decay,
                                   "aux_weight": aux_weight, "run_config": run_config or {}})
        self.channels_last = channels_last
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32))
        self.has_aux = callable(getattr(net, "forward_with_aux", None))
        num_classes = len(weights)
        self.metrics = nn.ModuleDict({
            stage: MetricCollection({
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="weighted"),
            }, prefix=f"{stage}_")
            for stage in _EVAL_STAGES
        })
        # sum(w_i l_i) / sum(w_i) over a split: each batch's weighted mean weighted by its weight sum
        self.eval_losses = nn.ModuleDict({stage: MeanMetric() for stage in _EVAL_STAGES})

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, K)`` for images ``(B, C, H, W)``."""
        return self.net(images)

    def loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Logits ``(B, K)`` and the loss (with the auxiliary term in training mode).

        Args:
            images: float ``(B, C, H, W)``.
            labels: int64 ``(B,)``.

        Raises:
            ValueError: The network gives another number of logits than there are class weights.
        """
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        aux = None
        if self.has_aux and self.training:
            logits, aux = self.net.forward_with_aux(images)
        else:
            logits = self.net(images)
        if logits.shape[1] != self.class_weights.shape[0]:
            raise ValueError(f"class_weights: got {self.class_weights.shape[0]} weights, but the network gives "
                             f"{logits.shape[1]} class logits; expected one weight per class")
        loss = weighted_cross_entropy(logits, labels, self.class_weights)
        if aux is not None:
            loss = loss + self.hparams.aux_weight * weighted_cross_entropy(aux, labels, self.class_weights)
        return logits, loss

    def _shared_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        labels = batch["label"]
        logits, loss = self.loss(batch["image"], labels)
        size = labels.shape[0]
        if stage not in _EVAL_STAGES:
            # Epoch mean, averaged over DDP ranks (one all-reduce per epoch; nothing on a single device).
            self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size,
                     sync_dist=True)
        else:
            # Metric objects: accumulated over the epoch and reduced over DDP ranks by torchmetrics.
            self.eval_losses[stage].update(loss.detach(), self.class_weights[labels].sum())
            self.log(f"{stage}_loss", self.eval_losses[stage], on_step=False, on_epoch=True, prog_bar=True,
                     batch_size=size)
            metrics = self.metrics[stage]
            metrics.update(logits.argmax(dim=1), labels)
            self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = global_rng_state()
        loss = self.trainer.callback_metrics.get("val_loss")  # Lightning calls this hook from a trainer only
        if loss is not None:
            checkpoint[VAL_LOSS_KEY] = float(loss)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RNG_KEY in checkpoint:  # checkpoints written before gpseg kept it have none
            set_global_rng_state(checkpoint[RNG_KEY])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
