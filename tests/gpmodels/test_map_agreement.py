"""Agreement of two stacks of maps: Spearman rank correlation and top-pixel overlap, slice by slice."""

from __future__ import annotations

import numpy as np
import pytest

from gpmodels.map_agreement import rank_agreement, top_fraction_overlap


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
    assert rank_agreement(empty, empty).shape == top_fraction_overlap(empty, empty).shape == (0,)


def test_top_fraction_overlap_on_known_masks():
    a = np.zeros((3, 10, 10))
    b = np.zeros((3, 10, 10))
    a.reshape(3, -1)[:, :5] = 1.0
    b.reshape(3, -1)[0, 2:7] = 1.0
    b.reshape(3, -1)[1, :5] = 2.0
    a.reshape(3, -1)[2, :5] = np.arange(5.0) + 1
    b.reshape(3, -1)[2] = 0.5
    out = top_fraction_overlap(a, b, fraction=0.05)

    np.testing.assert_allclose(out[:2], [3 / 7, 1.0])
    assert np.isnan(out[2])
    ties = np.zeros((1, 10, 10))
    ties[0, 0, :8] = 1.0
    first_five = np.zeros((1, 10, 10))
    first_five[0, 0, :5] = 1.0
    assert top_fraction_overlap(ties, first_five)[0] == pytest.approx(5 / 8)
    with pytest.raises(ValueError, match="fraction"):
        top_fraction_overlap(a, b, fraction=0.0)
