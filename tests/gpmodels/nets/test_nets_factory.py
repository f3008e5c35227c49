"""The model factory: names, options and their validation."""

import numpy as np
import pytest
import torch

from gpmodels.nets import (
    GP_MODEL_NAMES,
    MODEL_NAMES,
    GPReconResNet,
    GPUNet,
    InceptionV3,
    ResNeXt50,
    build_model,
    is_gp_model,
    model_options,
)


def test_names_and_gp_flags():
    assert MODEL_NAMES == (
        "gp-unet",
        "gp-reconresnet",
        "gp-shuffleunet",
        "inceptionv3",
        "resnext50",
    )
    assert GP_MODEL_NAMES == ("gp-unet", "gp-reconresnet", "gp-shuffleunet")
    assert [is_gp_model(n) for n in MODEL_NAMES] == [True, True, True, False, False]


def test_unknown_name_is_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="unknown model 'unet'.*'gp-unet'.*'resnext50'"):
        build_model("unet", 4, 3)
    with pytest.raises(ValueError, match="unknown model"):
        is_gp_model("GP-UNet")


def test_unknown_option_is_rejected_with_the_valid_options():
    expected = r"\['upsample'\].*'gp-shuffleunet'.*\['blur', 'depth', 'dropout', 'pool', 'width'\]"
    with pytest.raises(ValueError, match=expected):
        build_model("gp-shuffleunet", 4, 3, upsample="sinc")
    with pytest.raises(ValueError, match="valid options are \\[\\]"):
        build_model("resnext50", 4, 3, dropout=0.2)


def test_invalid_option_values_are_rejected():
    with pytest.raises(ValueError, match="pool"):
        build_model("gp-unet", 4, 3, pool="mean")
    with pytest.raises(ValueError, match="^upsample: expected one of"):
        build_model("gp-reconresnet", 4, 3, width=4, depth=1, upsample="nearest")
    with pytest.raises(ValueError, match="dropout"):
        build_model("gp-shuffleunet", 4, 3, dropout=1.0)
    with pytest.raises(ValueError, match="width"):
        build_model("gp-unet", 4, 3, width=0)


@pytest.mark.parametrize("name", ["gp-unet", "gp-reconresnet", "gp-shuffleunet", "inceptionv3", "resnext50"])
def test_counts_below_one_name_the_counts_given(name):
    """A GP model with 0 classes named its head's input (64 feature channels), not the 4 channels given."""
    with pytest.raises(ValueError, match=r"^in_channels, num_classes: expected positive counts, got 4, 0$"):
        build_model(name, 4, 0)
    with pytest.raises(ValueError, match=r"got 0, 3$"):
        build_model(name, 0, 3)


def test_defaults_follow_the_paper():
    assert model_options("gp-unet") == {
        "width": 64,
        "depth": 3,
        "pool": "features",
        "upsample": "sinc",
        "dropout": 0.5,
        "init": "pytorch",
    }
    assert model_options("gp-reconresnet")["depth"] == 14
    assert model_options("inceptionv3") == {"aux_logits": True, "dropout": 0.5}
    assert model_options("resnext50") == {}


def test_options_reach_the_network():
    unet = build_model(
        "gp-unet", 2, 5, width=4, depth=2, pool="maps", upsample="bilinear", dropout=0.1
    )
    recon = build_model("gp-reconresnet", 1, 2, width=4, depth=3)

    assert isinstance(unet, GPUNet) and isinstance(recon, GPReconResNet)
    assert unet.head.pool == "maps"
    assert unet.head.classifier.out_channels == 5
    assert unet.backbone.up[0].upsample.mode == "bilinear"
    assert unet.backbone.dropout.p == 0.1
    assert len(recon.backbone.residual) == 3
    assert isinstance(build_model("inceptionv3", 1, 2, aux_logits=False), InceptionV3)
    assert isinstance(build_model("resnext50", 1, 2), ResNeXt50)


def test_numpy_scalars_are_taken_as_python_numbers():
    """np.int64(4) was refused: "got np.int64(4) (int64), expected an integer"."""
    unet = build_model("gp-unet", np.int64(2), np.int32(3), width=np.int64(4), depth=np.int8(2),
                       dropout=np.float32(0.25))
    assert unet.backbone.dropout.p == 0.25 and type(unet.backbone.dropout.p) is float
    assert unet.head.classifier.out_channels == 3 and unet.head.classifier.in_channels == 4
    shuffle = build_model("gp-shuffleunet", 1, 2, width=4, depth=1, blur=np.bool_(True))
    assert shuffle(torch.zeros(1, 1, 6, 6)).shape == (1, 2)
    assert build_model("inceptionv3", 1, 2, aux_logits=np.bool_(False)).min_size == 75
    for key, value, expected in (("width", np.float64(4), "an integer"), ("width", np.bool_(True), "an integer"),
                                 ("dropout", np.bool_(False), "a number"), ("init", 3, "text")):
        with pytest.raises(ValueError, match=rf"^options: {key}: got .*, expected {expected}$"):
            build_model("gp-unet", 1, 2, **{key: value})


@pytest.mark.parametrize("name", ["gp-unet", "gp-reconresnet", "gp-shuffleunet", "inceptionv3", "resnext50"])
def test_counts_must_be_integers(name):
    """in_channels=2.0 failed deep inside torch."""
    with pytest.raises(ValueError, match=r"^in_channels: got 2.0 \(float\), expected an integer >= 1$"):
        build_model(name, 2.0, 3)
    with pytest.raises(ValueError, match=r"^num_classes: got True \(bool\), expected an integer >= 1$"):
        build_model(name, 2, True)
