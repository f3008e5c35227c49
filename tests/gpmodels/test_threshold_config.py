"""Typed threshold configuration: defaults, validation, paper constants."""

from __future__ import annotations

import pytest

from gpmodels.threshold_config import DEFAULT_OFFSET_GRID, PAPER_MULTIOTSU_OFFSETS, CleaningConfig, ThresholdConfig


def test_paper_offsets():
    assert PAPER_MULTIOTSU_OFFSETS == {"gp-unet": 0.3, "gp-shuffleunet": 0.1, "gp-reconresnet": 1.6}
    assert {0.1, 0.3, 1.6} <= set(DEFAULT_OFFSET_GRID)


def test_defaults_are_the_paper_recipe():
    config = ThresholdConfig()
    assert (config.method, config.classes, config.nbins, config.suppress_negative) == ("multiotsu", 3, 256, True)
    assert config.target_class == "predicted" and config.cleaning == CleaningConfig()


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="method"):
        ThresholdConfig(method="mean")
    with pytest.raises(ValueError, match="offset"):
        ThresholdConfig(offset=float("nan"))
    with pytest.raises(ValueError, match="offset"):
        ThresholdConfig(method="otsu", offset="auto")
    with pytest.raises(ValueError, match="target_class"):
        ThresholdConfig(target_class="best")
    with pytest.raises(ValueError, match="classes"):
        ThresholdConfig(classes=1)
    with pytest.raises(ValueError, match="auto_offsets"):
        ThresholdConfig(auto_offsets=())
    with pytest.raises(ValueError, match="cleaning.min_size"):
        CleaningConfig(min_size=-3)
    with pytest.raises(AttributeError):
        ThresholdConfig().offset = 1.0  # frozen
