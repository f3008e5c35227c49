"""ReLU audit for guided backpropagation, and parameter counting."""

import pytest
import torch
import torchvision
from torch import nn

from gpmodels.nets import MODEL_NAMES, build_model, count_parameters, relu_audit

SMALL = {
    "gp-unet": {"width": 8},
    "gp-reconresnet": {"width": 8, "depth": 2},
    "gp-shuffleunet": {"width": 8},
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_passes_the_relu_audit_in_a_training_forward(name):
    torch.manual_seed(0)
    model = build_model(name, 4, 3, **SMALL.get(name, {})).train()

    assert relu_audit(model, torch.randn(2, 4, 16, 16)) == []


def test_audit_flags_torchvision_resnext_inplace_and_reused_relus():
    model = torchvision.models.resnext50_32x4d(weights=None, num_classes=3)

    problems = relu_audit(model, torch.randn(2, 3, 32, 32))

    assert "layer1.0.relu: nn.ReLU with inplace=True" in problems
    assert "layer1.0.relu: nn.ReLU module called 3 times in one forward pass" in problems


def test_audit_flags_torchvision_inception_functional_relus():
    model = torchvision.models.inception_v3(
        weights=None, num_classes=3, aux_logits=False, init_weights=False
    ).eval()

    problems = relu_audit(model, torch.randn(1, 3, 75, 75))

    assert problems == ["94 functional ReLU call(s) outside nn.ReLU modules"]


def test_audit_flags_one_relu_registered_twice_without_running():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), relu, nn.Conv2d(2, 2, 3), relu)

    assert relu_audit(model) == ["1, 3: one nn.ReLU instance registered at several places"]


def test_count_parameters_counts_shared_parameters_once_and_can_skip_frozen():
    conv = nn.Conv2d(2, 3, kernel_size=3)
    frozen = nn.Linear(4, 5)
    frozen.requires_grad_(False)
    model = nn.Sequential(conv, conv, frozen)

    assert count_parameters(model) == 2 * 3 * 9 + 3 + 4 * 5 + 5
    assert count_parameters(model, trainable_only=True) == 2 * 3 * 9 + 3
