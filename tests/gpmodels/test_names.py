"""The per-model facts kept beside the network registry name every network, and the name lists agree."""

from typing import get_args

from gpmodels.names import GP_MODEL_NAMES, MODEL_NAMES, ModelName
from gpmodels.report_runs import MODEL_TITLES
from gpmodels.threshold_config import PAPER_MULTIOTSU_OFFSETS
from gpmodels.train_config import PRESET_MODEL_OVERRIDES


def test_the_model_type_names_the_registered_models():
    assert get_args(ModelName) == MODEL_NAMES  # the flows' parameter schema takes the type


def test_every_model_has_a_report_title_and_every_gp_model_a_paper_offset():
    """A network added to the registry and forgotten here would be reported by its name and thresholded with
    offset 0 without a word."""
    assert set(MODEL_TITLES) == set(MODEL_NAMES)
    assert set(PAPER_MULTIOTSU_OFFSETS) == set(GP_MODEL_NAMES)


def test_preset_overrides_name_registered_models():
    for preset, models in PRESET_MODEL_OVERRIDES.items():
        assert set(models) <= set(MODEL_NAMES), preset
