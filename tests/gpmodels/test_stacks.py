"""The (N, H, W) stack checks of post-processing and the metrics (gpmodels.stacks)."""

import numpy as np
import pytest

from gpmodels.stacks import check_maps, check_masks, check_stack


def test_each_way_a_stack_can_be_wrong_is_named():
    assert check_stack("x", [[[1]]]).shape == (1, 1, 1)
    with pytest.raises(ValueError, match=r"^x: got an array of shape \(2, 3\), expected \(N, H, W\)$"):
        check_stack("x", np.zeros((2, 3)))
    assert check_maps("maps", np.zeros((2, 3, 4), np.float16)).dtype == np.float16
    with pytest.raises(TypeError, match=r"^maps: got dtype int64, expected float16, float32 or float64$"):
        check_maps("maps", np.zeros((2, 3, 4), np.int64))
    assert check_maps("maps", np.zeros((2, 0, 4))).shape == (2, 0, 4)
    with pytest.raises(ValueError, match=r"^maps: got empty slices of shape \(0, 4\), expected H, W >= 1$"):
        check_maps("maps", np.zeros((2, 0, 4)), nonempty=True)
    with pytest.raises(TypeError, match=r"^masks: got dtype uint8, expected bool$"):
        check_masks("masks", np.zeros((1, 2, 2), np.uint8))
