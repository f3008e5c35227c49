"""GP head pooling orders, the GPNet wrapper and padding helpers."""

import pytest
import torch
from torch import nn

from gpmodels.nets.gp_head import GPHead, GPNet
from gpmodels.nets.padding import crop_to, pad_to_multiple


def _features() -> torch.Tensor:
    return torch.randn(2, 5, 9, 11, generator=torch.Generator().manual_seed(0))


def test_pool_maps_logits_are_the_max_of_each_map():
    head = GPHead(5, 3, pool="maps")
    features = _features()

    logits, maps = head.forward_maps(features)

    assert logits.shape == (2, 3)
    assert maps.shape == (2, 3, 9, 11)
    torch.testing.assert_close(logits, maps.amax(dim=(2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(head(features), logits)


def test_pool_features_classifies_the_max_pooled_features():
    head = GPHead(5, 3, pool="features")
    features = _features()
    pooled = features.amax(dim=(2, 3))
    expected = pooled @ head.classifier.weight[:, :, 0, 0].T + head.classifier.bias

    logits, maps = head.forward_maps(features)

    torch.testing.assert_close(head(features), expected)
    torch.testing.assert_close(logits, expected)
    assert maps.shape == (2, 3, 9, 11)
    # Pooling the features first is not pooling the maps: these logits are not the maps' maxima.
    assert not torch.allclose(maps.amax(dim=(2, 3)), logits)


def test_head_rejects_unknown_pool():
    with pytest.raises(ValueError, match="pool: expected one of \\('features', 'maps'\\)"):
        GPHead(5, 3, pool="mean")


def test_gpnet_composes_backbone_and_head():
    net = GPNet(nn.Conv2d(2, 5, kernel_size=3, padding=1), GPHead(5, 4, pool="maps"))
    x = torch.randn(3, 2, 7, 8)

    logits, maps = net.forward_maps(x)

    assert maps.shape == (3, 4, 7, 8)
    torch.testing.assert_close(net(x), logits)


def test_pad_to_multiple_replicates_edges_and_crop_restores():
    x = torch.arange(2 * 3 * 33 * 34, dtype=torch.float32).reshape(2, 3, 33, 34)

    padded = pad_to_multiple(x, 8)

    assert padded.shape == (2, 3, 40, 40)
    torch.testing.assert_close(crop_to(padded, (33, 34)), x)
    torch.testing.assert_close(padded[..., 39, :34], x[..., 32, :])
    torch.testing.assert_close(padded[..., :33, 39], x[..., :, 33])
    aligned = x[..., :32, :32]
    assert pad_to_multiple(aligned, 8) is aligned


def test_pad_to_multiple_rejects_bad_multiple():
    with pytest.raises(ValueError, match="multiple"):
        pad_to_multiple(torch.zeros(1, 1, 4, 4), 0)
