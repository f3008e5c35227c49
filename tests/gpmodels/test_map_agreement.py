"""Agreement of two stacks of maps: Spearman rank correlation, slice by slice."""

from __future__ import annotations

import numpy as np
import pytest

from gpmodels.map_agreement import rank_agreement


def test_rank_agreement_identical_monotone_reversed_and_constant():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 33, 34))
    b = np.stack([np.exp(a[0]), -a[1], np.zeros((33, 34))])
    out = rank_agreement(a, b)

    np.testing.assert_allclose(rank_agreement(a, a), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(out[:2], [1.0, -1.0])
    assert np.isnan(out[2])
    assert -1 <= rank_agreement(a, rng.normal(size=a.shape)).max() < 0.2
    with pytest.raises(ValueError, match=r"a, b: .*\(3, 33, 34\) and \(3, 33, 33\)"):
        rank_agreement(a, a[..., :33])
    with pytest.raises(ValueError, match="finite"):
        rank_agreement(a, np.full(a.shape, np.nan))
    empty = np.zeros((0, 33, 34))
    assert rank_agreement(empty, empty).shape == (0,)
