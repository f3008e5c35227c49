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
    with pytest.raises(ValueError, match="value: got -0.1, expected a number >= 0"):
        ThresholdConfig(method="fixed", value=-0.1)  # negative values are suppressed first: every pixel
    assert ThresholdConfig(method="fixed", value=-0.1, suppress_negative=False).value == -0.1
    with pytest.raises(ValueError, match="cleaning.min_size"):
        CleaningConfig(min_size=-3)
    with pytest.raises(AttributeError):
        ThresholdConfig().offset = 1.0  # frozen


def test_from_dict_inverts_asdict_and_takes_partial_json():
    from dataclasses import asdict

    config = ThresholdConfig(method="multiotsu", offset="auto", target_class="true",
                             auto_offsets=(0.1, 0.2), cleaning=CleaningConfig(min_size=5, largest_component=True))
    as_json = {**asdict(config), "auto_offsets": [0.1, 0.2]}
    assert ThresholdConfig.from_dict(as_json) == config
    assert ThresholdConfig.from_dict({"offset": 0.2, "cleaning": {"closing_radius": 1}}) == ThresholdConfig(
        offset=0.2, cleaning=CleaningConfig(closing_radius=1))
    assert not ThresholdConfig().cleaning.active and CleaningConfig(fill_holes_area=3).active


@pytest.mark.parametrize("values, match", [
    ({"offst": 0.2}, r"unknown fields \['offst'\]"),
    ({"cleaning": {"min_sise": 3}}, r"cleaning: unknown fields \['min_sise'\]"),
    ({"cleaning": {"min_size": -1}}, r"cleaning.min_size: got -1"),
])
def test_from_dict_names_the_bad_field(values, match):
    with pytest.raises(ValueError, match=match):
        ThresholdConfig.from_dict(values)
