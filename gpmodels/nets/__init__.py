"""The five networks of gpseg: three GP classifiers with built-in heatmaps and two baselines.

``build_model(name, in_channels, num_classes, **options)`` makes any of them; GP models also offer
``forward_maps(x) -> (logits, maps)``.
"""

from gpmodels.nets.audit import count_parameters, relu_audit
from gpmodels.nets.baselines import InceptionV3, ResNeXt50
from gpmodels.nets.factory import (
    GP_MODEL_NAMES,
    MODEL_NAMES,
    build_model,
    check_options,
    is_gp_model,
    meta_model,
    model_options,
)
from gpmodels.nets.gp_head import POOL_MODES, GPHead, GPNet, PoolMode
from gpmodels.nets.gp_reconresnet import GPReconResNet
from gpmodels.nets.gp_shuffleunet import GPShuffleUNet
from gpmodels.nets.gp_unet import GPUNet
from gpmodels.nets.sinc import UPSAMPLE_MODES, Upsample2d, UpsampleMode, fourier_upsample

__all__ = [
    "GP_MODEL_NAMES",
    "MODEL_NAMES",
    "POOL_MODES",
    "UPSAMPLE_MODES",
    "GPHead",
    "GPNet",
    "GPReconResNet",
    "GPShuffleUNet",
    "GPUNet",
    "InceptionV3",
    "PoolMode",
    "ResNeXt50",
    "Upsample2d",
    "UpsampleMode",
    "build_model",
    "check_options",
    "count_parameters",
    "fourier_upsample",
    "is_gp_model",
    "meta_model",
    "model_options",
    "relu_audit",
]
