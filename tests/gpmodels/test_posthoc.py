"""Post-hoc maps (Grad-CAM, occlusion, guided backpropagation), GP heatmaps and their agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import Saliency
from torch import Tensor, nn

from gpmodels.gradcam import (block_grids, cam_blocks, cam_grid, choose_cam_layer, default_cam_layer,
                              evaluation_mode, gradcam_maps, gradcam_target_maps)
from gpmodels.map_agreement import rank_agreement
from gpmodels.nets import build_model
from gpmodels.posthoc import (
    OCCLUSION_FORWARD_PIXELS,
    OcclusionConfig,
    auto_perturbations,
    gp_heatmaps,
    guided_backprop_maps,
    occlusion_maps,
    occlusion_window,
    posthoc_batch,
)

ROWS, COLS = slice(12, 18), slice(20, 25)


class RegionSum(nn.Module):
    """Logits (sum of a fixed region, minus that sum): depends on the region's pixels only."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, height, width)
        mask[..., ROWS, COLS] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        total = (x * self.mask).sum(dim=(1, 2, 3))
        return torch.stack([total, -total], dim=1)


def small_cnn(activation: type[nn.Module] = nn.ReLU, **kwargs: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), activation(**kwargs),
        nn.Conv2d(6, 6, 3, padding=1), activation(**kwargs),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )


class FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def gp_unet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("gp-unet", 4, 3, width=8)


@pytest.fixture(scope="module")
def batch() -> tuple[Tensor, Tensor]:
    torch.manual_seed(1)
    return torch.randn(2, 4, 33, 34), torch.tensor([2, 0])


@pytest.fixture(scope="module")
def resnext() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnext50", 4, 3)


@pytest.mark.parametrize("name", ["resnext50", "inceptionv3"])
def test_gradcam_is_the_rectified_cam_at_the_original_input_size(name, resnext, batch):
    torch.manual_seed(0)
    model = resnext if name == "resnext50" else build_model(name, 4, 3, aux_logits=False)
    model.train()
    images = batch[0][:1]
    layer = default_cam_layer(model)
    fc = model.fc if name == "resnext50" else model.net.fc
    seen = {}
    handle = layer.register_forward_hook(lambda module, args, out: seen.update(a=out))
    maps = gradcam_maps(model, images)
    handle.remove()

    activations = seen["a"].detach()
    assert activations.shape[-2:] == ((2, 2) if name == "resnext50" else (1, 1))
    cam = torch.einsum("kc,bchw->bkhw", fc.weight.detach(), activations)
    expected = F.interpolate(
        F.relu(cam) / activations[0, 0].numel(), size=(33, 34), mode="bilinear", align_corners=False
    )
    assert maps.shape == (1, 3, 33, 34)
    assert (maps >= 0).all()
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)
    assert model.training


def test_default_cam_layer_and_gradcam_refusals(gp_unet, resnext):
    inception = build_model("inceptionv3", 1, 2, aux_logits=False)
    assert default_cam_layer(inception) is inception.net.Mixed_7c
    assert default_cam_layer(resnext) is resnext.layer4
    with pytest.raises(ValueError, match="no default Grad-CAM layer for GPUNet"):
        default_cam_layer(gp_unet)
    model = small_cnn()
    images = torch.randn(1, 2, 9, 9)
    with pytest.raises(ValueError, match="not a submodule"):
        gradcam_maps(model, images, layer=nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match=r"classes: .*\[0, 3\)"):
        gradcam_maps(model, images, classes=[3], layer=model[2])
    with pytest.raises(ValueError, match="expected a convolutional layer"):
        gradcam_maps(model, images, layer=model[6])
    images = torch.randn(2, 2, 9, 10)
    maps = gradcam_maps(model, images, layer=model[3])
    assert maps.shape == (2, 3, 9, 10) and maps.max() > 0
    torch.testing.assert_close(gradcam_maps(model, images, [2, 0], model[3]), maps[:, [2, 0]])
    torch.testing.assert_close(
        gradcam_target_maps(model, images, torch.tensor([2, 0]), model[3]),
        torch.stack([maps[0, 2], maps[1, 0]]),
    )


def test_cam_grid_is_the_layer_output_the_maps_are_enlarged_from(resnext):
    inception = build_model("inceptionv3", 4, 3, aux_logits=False)
    assert cam_grid(inception, torch.rand(2, 4, 64, 64)) == ("net.Mixed_7c", 1, 1)  # enlarged to 75 px inside
    assert cam_grid(inception, torch.rand(1, 4, 240, 240)) == ("net.Mixed_7c", 6, 6)
    assert cam_grid(resnext, torch.rand(1, 4, 64, 64)) == ("layer4", 2, 2)
    constant = gradcam_maps(inception.eval(), torch.rand(2, 4, 64, 64))
    # 1x1: nothing to localise, and exactly constant (bilinear enlargement left rounding noise, which rank
    # agreement and Otsu then read as structure)
    assert torch.equal(constant, constant[..., :1, :1].expand_as(constant))
    model = small_cnn()
    assert cam_grid(model, torch.randn(1, 2, 9, 10), layer=model[3])[1:] == (9, 10)


def test_occlusion_credits_exactly_the_pixels_the_logit_depends_on():
    torch.manual_seed(0)
    images = torch.rand(2, 2, 33, 34) + 1.0
    model = RegionSum(33, 34)
    maps = occlusion_maps(model, images, torch.tensor([0, 1]), window=3, stride=2)

    assert maps.shape == (2, 33, 34)
    reach = torch.zeros(33, 34, dtype=torch.bool)
    reach[ROWS.start - 2 : ROWS.stop + 2, COLS.start - 2 : COLS.stop + 2] = True
    assert (maps[:, ~reach] == 0).all()
    assert (maps[0, ROWS, COLS] > 0).all() and (maps[1, ROWS, COLS] < 0).all()
    assert maps[0, ROWS, COLS].min() > maps[0, ~reach].max()
    peak = divmod(int(maps[0].argmax()), 34)
    assert ROWS.start <= peak[0] < ROWS.stop and COLS.start <= peak[1] < COLS.stop
    torch.testing.assert_close(occlusion_maps(model, images, [0, 1]), maps)
    for per_pass in (1, 3, 64):
        batched = occlusion_maps(model, images, [0, 1], window=3, stride=2, perturbations_per_eval=per_pass)
        torch.testing.assert_close(batched, maps)


def test_automatic_perturbations_per_pass_fill_a_pixel_budget_by_device():
    cpu, cuda = OCCLUSION_FORWARD_PIXELS["cpu"], OCCLUSION_FORWARD_PIXELS["cuda"]
    assert auto_perturbations(1, 64, 64, "cpu") == cpu // 4096
    assert auto_perturbations(2, 64, 32, torch.device("cpu")) == cpu // 4096
    assert auto_perturbations(2, 240, 240, "cuda") == cuda // (2 * 240 * 240)
    assert auto_perturbations(2, 64, 64, "meta") == auto_perturbations(2, 64, 64, "cpu")
    assert auto_perturbations(2, 512, 512, "cpu") == 1 and auto_perturbations(10_000, 240, 240, "cuda") == 1
    assert OcclusionConfig().perturbations_per_eval is None
    with pytest.raises(ValueError, match="batch: expected an integer >= 1, got 0"):
        auto_perturbations(0, 64, 64, "cpu")
    with pytest.raises(ValueError, match="width: expected an integer >= 1, got 0"):
        auto_perturbations(1, 64, 0, "cpu")


def test_occlusion_window_defaults_and_argument_checks():
    assert [occlusion_window(s, s) for s in (512, 240, 128, 32)] == [15, 15, 9, 3]
    assert occlusion_window(33, 2) == 2
    images = torch.rand(1, 2, 8, 9)
    with pytest.raises(ValueError, match=r"window: expected an integer \[1, 8\], got 9"):
        occlusion_maps(RegionSum(8, 9), images, torch.tensor([0]), window=9)
    with pytest.raises(ValueError, match="stride"):
        occlusion_maps(RegionSum(8, 9), images, torch.tensor([0]), stride=0)
    # a stride past the window leaves pixels no window covers: captum's bare AssertionError (NaN under -O)
    with pytest.raises(ValueError, match=r"stride: expected an integer \[1, 3\], got 5"):
        occlusion_maps(RegionSum(8, 9), images, torch.tensor([0]), window=3, stride=5)
    with pytest.raises(ValueError, match=r"stride: expected an integer \[1, 3\], got 5"):
        OcclusionConfig(window=3, stride=5)
    with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 2\)"):
        occlusion_maps(RegionSum(8, 9), images, torch.tensor([2]))
    with pytest.raises(ValueError, match=r"target: expected shape \(1,\)"):
        occlusion_maps(RegionSum(8, 9), images, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer class indices"):
        occlusion_maps(RegionSum(8, 9), images, torch.tensor([0.0]))
    with pytest.raises(TypeError, match="images: expected a torch.Tensor"):
        occlusion_maps(RegionSum(8, 9), images.numpy(), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"images: .*dtype torch.int64 and shape \(1, 2, 8, 9\)"):
        occlusion_maps(RegionSum(8, 9), images.long(), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"images: .*shape \(2, 8, 9\)"):
        occlusion_maps(RegionSum(8, 9), images[0], torch.tensor([0]))


def test_guided_backprop_is_guided_and_non_trivial():
    model = small_cnn()
    images = torch.randn(2, 2, 11, 13)
    target = torch.tensor([0, 2])
    guided = guided_backprop_maps(model, images, target)
    plain = Saliency(model).attribute(images.requires_grad_(), target=target, abs=True).amax(dim=1)

    assert guided.shape == (2, 11, 13)
    assert (guided >= 0).all() and guided.amax(dim=(1, 2)).min() > 0
    assert not torch.allclose(guided, plain, rtol=1e-3, atol=1e-6)
    assert (guided - plain).abs().max() > 0.1 * plain.max()


class GuidedRelu(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients, and only where its input was positive."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


def test_guided_backprop_equals_a_hand_written_guided_relu_reference():
    # Deconvolution (positive gradients only, input sign ignored) and the plain gradient
    # (input sign only) both differ from this reference on this model and batch.
    model = small_cnn()
    images = torch.randn(2, 2, 11, 13, generator=torch.Generator().manual_seed(5))
    target = torch.tensor([0, 2])
    inputs = images.clone().requires_grad_()
    hidden = inputs
    for layer in model:
        hidden = GuidedRelu.apply(hidden) if isinstance(layer, nn.ReLU) else layer(hidden)
    hidden.gather(1, target[:, None]).sum().backward()

    torch.testing.assert_close(guided_backprop_maps(model, images, target), inputs.grad.abs().amax(dim=1))


class GuidedPRelu(torch.autograd.Function):
    """PReLU (one slope ``a``) whose backward passes on only the positive part of its input gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, slope: Tensor) -> Tensor:
        ctx.save_for_backward(x, slope)
        return torch.where(x > 0, x, slope * x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        x, slope = ctx.saved_tensors
        return (grad * torch.where(x > 0, torch.ones_like(x), slope)).clamp(min=0), None


def test_guided_backprop_through_prelu_is_guided_too():
    """GP-ReconResNet rectifies with PReLU, which captum does not hook: its "guided" maps were the plain
    gradient. Each PReLU now passes back only positive gradients, as a ReLU does."""
    model = small_cnn(nn.PReLU)
    images = torch.randn(2, 2, 11, 13, generator=torch.Generator().manual_seed(5))
    target = torch.tensor([1, 0])
    inputs = images.clone().requires_grad_()
    hidden = inputs
    for layer in model:
        hidden = GuidedPRelu.apply(hidden, layer.weight.detach()) if isinstance(layer, nn.PReLU) else layer(hidden)
    hidden.gather(1, target[:, None]).sum().backward()
    guided = guided_backprop_maps(model, images, target)
    plain = Saliency(model).attribute(images.clone().requires_grad_(), target=target, abs=True).amax(dim=1)

    torch.testing.assert_close(guided, inputs.grad.abs().amax(dim=1))
    assert (guided - plain).abs().max() > 0.1 * plain.max()
    assert not [m for m in model.modules() if m._backward_hooks]  # the hooks are gone afterwards


@pytest.mark.parametrize(
    ("make_model", "message"),
    [(lambda: small_cnn(inplace=True), "inplace=True"), (FunctionalRelu, "functional ReLU")],
)
def test_guided_backprop_refuses_models_failing_the_relu_audit(make_model, message):
    with pytest.raises(ValueError, match=f"relu_audit found: .*{message}"):
        guided_backprop_maps(make_model(), torch.randn(1, 2, 9, 9), torch.tensor([0]))


def test_gp_heatmaps_select_the_target_map_of_forward_maps(gp_unet, batch):
    images, target = batch
    gp_unet.eval()
    with torch.no_grad():
        _, maps = gp_unet.forward_maps(images)
    gp_unet.train()
    selected = gp_heatmaps(gp_unet, images, target)

    torch.testing.assert_close(selected, torch.stack([maps[0, 2], maps[1, 0]]))
    assert gp_unet.training
    with pytest.raises(TypeError, match="forward_maps"):
        gp_heatmaps(small_cnn(), torch.randn(1, 2, 9, 9), torch.tensor([0]))


def test_posthoc_batch_on_a_gp_model_restores_modes(gp_unet, batch):
    images, target = batch
    gp_unet.train()
    gp_unet.head.eval()
    maps = posthoc_batch(gp_unet, images, target, is_gp=True, occlusion=OcclusionConfig(7, 7))

    assert list(maps) == ["gp", "occlusion", "guided_backprop"]
    assert all(m.shape == (2, 33, 34) and m.dtype == np.float32 for m in maps.values())
    np.testing.assert_allclose(maps["gp"], gp_heatmaps(gp_unet, images, target).numpy())
    assert np.abs(maps["occlusion"]).max() > 0 and maps["guided_backprop"].max() > 0
    assert gp_unet.training and gp_unet.backbone.training and not gp_unet.head.training
    agreement = rank_agreement(maps["gp"], maps["occlusion"])
    assert agreement.shape == (2,) and np.all(np.abs(agreement) <= 1)


def test_posthoc_batch_on_a_baseline_and_argument_checks(resnext, batch):
    model = resnext
    images, target = batch
    one = OcclusionConfig(window=11, stride=11, perturbations_per_eval=4)
    maps = posthoc_batch(model, images[:1], target[:1], ("occlusion",), is_gp=False, occlusion=one)

    assert list(maps) == ["gradcam", "occlusion"]
    assert maps["gradcam"].shape == (1, 33, 34) and maps["gradcam"].min() >= 0
    with pytest.raises(ValueError, match="unknown \\['saliency'\\]"):
        posthoc_batch(model, images, target, ("saliency",), is_gp=False)
    with pytest.raises(TypeError, match="methods"):
        posthoc_batch(model, images, target, "occlusion", is_gp=False)
    with pytest.raises(TypeError, match="forward_maps"):
        posthoc_batch(model, images, target, (), is_gp=True)
    with pytest.raises(ValueError, match="perturbations_per_eval: expected an integer >= 1, got 0"):
        OcclusionConfig(perturbations_per_eval=0)


def test_evaluation_mode_restores_mixed_modes_even_on_error():
    model = small_cnn().train()
    model[1].eval()
    with pytest.raises(RuntimeError), evaluation_mode(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError
    assert model.training and not model[1].training and model[0].training


def test_auto_cam_layer_is_the_deepest_block_with_a_6x6_grid_else_the_finest(resnext):
    """At the demo's 64 px the last blocks' grids are 1x1 (InceptionV3) and 2x2 (ResNeXt50): constant or near-constant
    maps. ``auto`` keeps the last block where its grid is 6x6 or finer and reads an earlier one below."""
    inception = build_model("inceptionv3", 4, 3, aux_logits=False)
    small, large = torch.rand(1, 4, 64, 64), torch.rand(1, 4, 240, 240)
    assert block_grids(resnext, small) == [("layer4", 2, 2), ("layer3", 4, 4), ("layer2", 8, 8), ("layer1", 16, 16)]
    assert choose_cam_layer(resnext, small, "auto") is resnext.layer2
    assert choose_cam_layer(resnext, large, "auto") is resnext.layer4  # 8x8 already: the usual layer
    assert choose_cam_layer(resnext, torch.rand(1, 4, 128, 128), "auto") is resnext.layer3  # layer4 4x4, layer3 8x8
    assert cam_grid(resnext, torch.rand(1, 4, 16, 16), choose_cam_layer(resnext, torch.rand(1, 4, 16, 16), "auto")
                    ) == ("layer1", 4, 4)  # no block reaches 6x6: the finest
    # InceptionV3 without its auxiliary classifier enlarges 64 px to 75 inside: Mixed_6e is 3x3, Mixed_5d 7x7
    assert cam_grid(inception, small, choose_cam_layer(inception, small, "auto")) == ("net.Mixed_5d", 7, 7)
    assert cam_grid(inception, large, choose_cam_layer(inception, large, "auto")) == ("net.Mixed_7c", 6, 6)
    assert [name for name, *_ in block_grids(inception, small)] == cam_blocks(inception)
    assert choose_cam_layer(inception, small, "last") is inception.net.Mixed_7c
    assert choose_cam_layer(resnext, small, "last") is resnext.layer4
    # the usual Grad-CAM sizes keep the last block: ResNets' 7x7 at 224 px, InceptionV3 with its auxiliary head
    # (the paper preset's) at any size, as it enlarges inputs to 299 px
    assert choose_cam_layer(resnext, torch.rand(1, 4, 224, 224), "auto") is resnext.layer4
    with_aux = build_model("inceptionv3", 4, 3)
    for size in (64, 240):
        probe = torch.rand(1, 4, size, size)
        assert cam_grid(with_aux, probe, choose_cam_layer(with_aux, probe, "auto")) == ("net.Mixed_7c", 8, 8)
    maps = gradcam_maps(resnext.eval(), torch.rand(2, 4, 64, 64), layer=choose_cam_layer(resnext, small, "auto"))
    assert maps.shape == (2, 3, 64, 64)
    assert not torch.equal(maps, maps[..., :1, :1].expand_as(maps))  # an 8x8 grid enlarged: not constant


def test_a_cam_layer_by_name_and_its_refusals(gp_unet, resnext):
    inception = build_model("inceptionv3", 4, 3, aux_logits=False)
    assert choose_cam_layer(inception, None, "Mixed_6e") is inception.net.Mixed_6e  # without the wrapper's "net."
    assert choose_cam_layer(inception, None, "net.Mixed_6e") is inception.net.Mixed_6e
    assert choose_cam_layer(resnext, None, "layer3.1") is resnext.layer3[1]
    for wrong in ("layer9", "", "Mixed_6e"):
        with pytest.raises(ValueError, match=f"cam_layer: ResNeXt50 has no layer '{wrong}'; expected auto, last or a "
                                             "layer's name, e.g. one of its blocks layer4, layer3, layer2, layer1"):
            choose_cam_layer(resnext, None, wrong)
    with pytest.raises(ValueError, match="no default Grad-CAM layer for GPUNet"):
        choose_cam_layer(gp_unet, torch.rand(1, 4, 32, 32), "auto")
    with pytest.raises(ValueError, match="images: cam_layer 'auto' needs a batch"):
        choose_cam_layer(resnext, None, "auto")
    # modules that are no feature grid are refused by name, before any map is made
    probe = torch.rand(1, 4, 64, 64)
    with_aux = build_model("inceptionv3", 4, 3)
    with pytest.raises(ValueError, match=r"cam_layer: net.AuxLogits does not run when InceptionV3 evaluates an image "
                                         r"\(e.g. an auxiliary head\); give one of its blocks: net.Mixed_7c, "):
        cam_grid(with_aux, probe, choose_cam_layer(with_aux, probe, "AuxLogits"))
    with pytest.raises(ValueError, match=r"cam_layer: fc gives shape \(1, 3\), not a feature grid \(B, c, h, w\); "
                                         "give a convolutional layer or block: layer4, "):
        cam_grid(resnext, probe, choose_cam_layer(resnext, probe, "fc"))
