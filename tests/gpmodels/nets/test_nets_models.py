"""The five networks: shapes, heatmaps, parameter counts, gradients, dropout, Inception input."""

import pytest
import torch
from torch import nn

from gpmodels.nets import GP_MODEL_NAMES, build_model, count_parameters
from gpmodels.nets.gp_shuffleunet import BinomialBlur

SMALL = {
    "gp-unet": {"width": 8},
    "gp-reconresnet": {"width": 8, "depth": 2},
    "gp-shuffleunet": {"width": 8},
}

VARIANTS = [*((name, SMALL[name]) for name in GP_MODEL_NAMES),
            ("gp-shuffleunet", {**SMALL["gp-shuffleunet"], "blur": True})]
"""Every GP network at its small test size, and GP-ShuffleUNet with its optional blur."""


def _images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", ["gp-unet", "gp-reconresnet", "gp-shuffleunet", "resnext50"])
def test_logits_shape_in_train_and_eval(name):
    model = build_model(name, 4, 3, **SMALL.get(name, {}))
    x = _images(2, 4, 32, 32)

    assert model.train()(x).shape == (2, 3)
    assert model.eval()(x).shape == (2, 3)


@pytest.mark.parametrize("name", GP_MODEL_NAMES)
@pytest.mark.parametrize("size", [(33, 34), (16, 16), (9, 7)])
def test_maps_have_the_input_size(name, size):
    model = build_model(name, 4, 3, **SMALL[name]).eval()
    x = _images(2, 4, *size)

    logits, maps = model.forward_maps(x)

    assert logits.shape == (2, 3)
    assert maps.shape == (2, 3, *size)
    assert torch.isfinite(maps).all()
    torch.testing.assert_close(model(x), logits)


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_pool_maps_logits_equal_max_of_maps(name, options):
    model = build_model(name, 1, 3, pool="maps", **options).eval()

    logits, maps = model.forward_maps(_images(2, 1, 33, 34))

    torch.testing.assert_close(logits, maps.amax(dim=(2, 3)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("upsample", ["sinc", "bilinear"])
@pytest.mark.parametrize("name", ["gp-unet", "gp-reconresnet"])
def test_upsample_modes_both_work(name, upsample):
    model = build_model(name, 2, 3, upsample=upsample, **SMALL[name]).eval()

    _, maps = model.forward_maps(_images(2, 2, 17, 18))

    assert maps.shape == (2, 3, 17, 18)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("gp-unet", 1_740_675), ("gp-reconresnet", 17_272_918), ("gp-shuffleunet", 26_371_587)],
)
def test_parameter_counts_at_default_width_match_the_paper(name, expected):
    paper = {"gp-unet": 1.74e6, "gp-reconresnet": 17.27e6, "gp-shuffleunet": 26.37e6}[name]

    count = count_parameters(build_model(name, 4, 3))

    assert count == expected
    assert abs(count - paper) / paper < 0.02


NO_GRADIENT_BY_DESIGN = {
    # pool="features" max-pools the last PReLU's output; its input is instance-normalised (zero mean per
    # channel, so each channel's maximum is positive), where PReLU is the identity: its slope, which scales
    # negative inputs only, gets no gradient from any batch.
    ("gp-reconresnet", "features"): {"backbone.up.1.conv.3.weight"},
}
"""Parameters of a (network, pool) that no batch gives a gradient, beside :func:`_biases_before_a_norm`."""

RELATIVE_ZERO = 1e-6
"""A gradient whose largest entry is below this fraction of the model's largest is zero (float rounding):
the smallest real one at these sizes is about 2e-5 of the largest, rounding leaves at most about 1e-7."""


def _biases_before_a_norm(model: nn.Module) -> set[str]:
    """Biases of convolutions that feed InstanceNorm or (training) BatchNorm directly.

    The norm subtracts each channel's mean, which absorbs a constant per channel: such a bias has no
    gradient but float rounding.
    """
    found = set()
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (name, layer), (_, following) in zip(children, children[1:]):
            if (isinstance(layer, nn.Conv2d) and layer.bias is not None
                    and isinstance(following, (nn.InstanceNorm2d, nn.BatchNorm2d))):
                found.add(f"{prefix}.{name}.bias")
    return found


@pytest.mark.parametrize("pool", ["features", "maps"])
@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_gradient_reaches_every_parameter(name, options, pool):
    model = build_model(name, 4, 3, pool=pool, dropout=0.0, **options).train()
    target = torch.tensor([0, 2])

    nn.functional.cross_entropy(model(_images(2, 4, 16, 16)), target).backward()

    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    largest = max(p.grad.abs().max() for p in params.values())
    zero = {n for n, p in params.items() if p.grad.abs().max() <= RELATIVE_ZERO * largest}
    allowed = _biases_before_a_norm(model) | NO_GRADIENT_BY_DESIGN.get((name, pool), set())
    assert allowed <= params.keys(), allowed - params.keys()
    assert zero <= allowed, sorted(zero - allowed)
    for n in NO_GRADIENT_BY_DESIGN.get((name, pool), set()):
        assert not params[n].grad.any(), n


@pytest.mark.parametrize("name", GP_MODEL_NAMES)
def test_default_dropout_drops_about_half_the_channels_in_training(name):
    model = build_model(name, 4, 3, **SMALL[name]).train()
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]
    fractions = []

    def record(module, inputs, output):
        alive_in = inputs[0].abs().amax(dim=(2, 3)) > 0
        dropped = alive_in & (output.abs().amax(dim=(2, 3)) == 0)
        fractions.append(dropped.sum().item() / alive_in.sum().item())

    for module in dropouts:
        module.register_forward_hook(record)
    logits = model(_images(4, 4, 16, 16))

    assert dropouts and all(m.p == 0.5 for m in dropouts)
    assert len(fractions) == len(dropouts)
    assert all(0.2 < f < 0.8 for f in fractions), fractions
    assert logits.abs().sum() > 0


def test_shuffleunet_pixel_shuffle_starts_as_nearest_neighbour_upsampling():
    model = build_model("gp-shuffleunet", 4, 3, **SMALL["gp-shuffleunet"])

    up = model.backbone.up[0](_images(2, 64, 3, 5))

    assert up.shape == (2, 32, 6, 10)
    torch.testing.assert_close(up, up[..., ::2, ::2].repeat_interleave(2, -2).repeat_interleave(2, -1))


def _subpixel_energy(maps: torch.Tensor) -> float:
    """Share of the maps' AC spectral energy on the rows and columns of the Nyquist frequency."""
    power = torch.fft.fft2(maps - maps.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
    n = maps.shape[-1] // 2
    return float((power[..., n, :].sum() + power[..., :, n].sum()) / power.sum())


def test_shuffleunet_blur_keeps_drifted_subpixel_phases_out_of_the_maps():
    # Re-initialise the shuffles' convolutions without ICNR, as training leaves them: their four
    # sub-pixel phases then differ and, without the blur, the maps carry a period-2 lattice.
    smooth = nn.functional.interpolate(_images(2, 4, 4, 4), size=(32, 32), mode="bilinear")
    energy = {}
    for blur in (False, True):
        torch.manual_seed(0)
        model = build_model("gp-shuffleunet", 4, 3, width=8, depth=2, blur=blur).eval()
        for block in model.backbone.up:
            nn.init.normal_(block[0].weight, std=0.5)
        with torch.no_grad():
            energy[blur] = _subpixel_energy(model.forward_maps(smooth)[1])

    assert energy[False] > 0.05, energy
    assert energy[True] < energy[False] / 50, energy


def test_binomial_blur_removes_period_two_patterns_up_to_the_borders():
    # Sub-pixel phases that differ along rows, columns and both: only their mean may remain,
    # on the edge rows and columns too (a leak there is where a GP network hides its evidence).
    rows = torch.tensor([1.0, -1.0]).repeat(5)[:, None]
    cols = torch.tensor([1.0, -1.0]).repeat(6)[None, :]
    pattern = (3.0 + 0.5 * rows + 2.0 * cols + rows * cols).expand(2, 3, 10, 12)

    blurred = BinomialBlur()(pattern)

    torch.testing.assert_close(blurred, torch.full_like(pattern, 3.0))


def test_shuffleunet_blur_adds_no_parameters_and_keeps_the_shapes():
    plain = build_model("gp-shuffleunet", 4, 3, width=8)
    blurred = build_model("gp-shuffleunet", 4, 3, width=8, blur=True)
    x = _images(2, 4, 20, 28)

    assert count_parameters(blurred) == count_parameters(plain)
    assert blurred.state_dict().keys() == plain.state_dict().keys()
    logits, maps = blurred.forward_maps(x)
    assert logits.shape == (2, 3) and maps.shape == (2, 3, 20, 28)


def test_gp_unet_pools_down_by_2x2_averages():
    """The module docstring says 2x2 average pooling; nothing checked which pooling fed the next level."""
    model = build_model("gp-unet", in_channels=2, num_classes=3, width=4).eval()
    seen = {}
    down = model.backbone.down
    down[0].register_forward_hook(lambda module, args, out: seen.setdefault("level0", out))
    down[1].register_forward_pre_hook(lambda module, args: seen.setdefault("level1_in", args[0]))
    model(torch.randn(1, 2, 16, 16))
    torch.testing.assert_close(seen["level1_in"], nn.functional.avg_pool2d(seen["level0"], 2))


def test_gp_unet_init_kaiming_gives_he_weights_and_zero_biases():
    default = build_model("gp-unet", 4, 3, width=16)
    kaiming = build_model("gp-unet", 4, 3, width=16, init="kaiming")

    conv = kaiming.backbone.down[1][0]
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
    assert all(not m.bias.any() for m in kaiming.modules() if isinstance(m, nn.Conv2d))
    assert default.backbone.down[1][0].weight.std().item() < conv.weight.std().item() / 2


def test_gp_unet_unknown_init_is_rejected():
    with pytest.raises(ValueError, match="init: expected one of"):
        build_model("gp-unet", 4, 3, width=8, init="he")


def test_eval_mode_is_deterministic():
    model = build_model("gp-reconresnet", 4, 3, **SMALL["gp-reconresnet"]).eval()
    x = _images(2, 4, 16, 16)

    torch.testing.assert_close(model.forward_maps(x), model.forward_maps(x))


def test_gp_unet_runs_under_bfloat16_autocast():
    model = build_model("gp-unet", 4, 3, **SMALL["gp-unet"]).eval()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, maps = model.forward_maps(_images(2, 4, 16, 16))

    assert maps.shape == (2, 3, 16, 16)
    assert torch.isfinite(logits.float()).all()


def _stem_input_size(model, x):
    seen = []
    stem = model.net.Conv2d_1a_3x3
    handle = stem.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-2:]))
    out = model.forward_with_aux(x)
    handle.remove()
    return out, tuple(seen[0])


def test_inception_returns_logits_and_aux_in_training_and_enlarges_small_inputs():
    model = build_model("inceptionv3", 4, 3).train()

    (logits, aux), stem_size = _stem_input_size(model, _images(2, 4, 33, 34))

    assert logits.shape == (2, 3)
    assert aux.shape == (2, 3)
    assert stem_size == (299, 299)
    assert isinstance(model(_images(2, 4, 33, 34)), torch.Tensor)


def test_inception_without_aux_needs_only_75_pixels_and_keeps_larger_inputs():
    model = build_model("inceptionv3", 1, 2, aux_logits=False).eval()

    (small, aux), small_size = _stem_input_size(model, _images(1, 1, 40, 50))
    (_, _), large_size = _stem_input_size(model, _images(1, 1, 80, 90))

    assert small.shape == (1, 2)
    assert aux is None
    assert small_size == (75, 75)
    assert large_size == (80, 90)
    assert model(_images(1, 1, 40, 50)).shape == (1, 2)



@pytest.mark.parametrize("name", GP_MODEL_NAMES)
def test_gp_nets_check_their_input_in_one_line(name):
    """An unbatched (C, H, W) image reported an internal shape; GP-ReconResNet below 5 px a torch padding error."""
    net = build_model(name, 2, 3, **SMALL[name]).eval()
    for forward in (net, net.forward_maps):
        with pytest.raises(ValueError, match=r"^x: got a tensor of shape \(2, 16, 16\), expected \(B, C, H, W\)"):
            forward(_images(2, 16, 16))
    small = _images(1, 2, 4, 9)
    if name == "gp-reconresnet":
        for forward in (net, net.forward_maps):
            with pytest.raises(ValueError, match=r"^x: got H, W = 4, 9, expected at least 5 px each \(GPReconResNet"):
                forward(small)
    else:
        assert net(small).shape == (1, 3)
    assert net(_images(1, 2, 5, 5)).shape == (1, 3)


def test_an_unknown_upsample_mode_is_named_as_the_option():
    """The message said "mode", Upsample2d's argument; GP-UNet at depth 1 (no up-sampling) took any value."""
    for name, depth in (("gp-unet", 1), ("gp-unet", 2), ("gp-reconresnet", 0)):
        with pytest.raises(ValueError, match=r"^upsample: expected one of \('sinc', 'bilinear'\), got 'nearest'$"):
            build_model(name, 1, 2, width=4, depth=depth, upsample="nearest")


@pytest.mark.parametrize("name", GP_MODEL_NAMES)
def test_gp_nets_trace_export_and_compile(name):
    """What the README promises: torch.jit.trace, torch.export and torch.compile (torch.jit.script is not)."""
    net = build_model(name, 2, 3, **SMALL[name]).eval()
    images = _images(2, 2, 16, 16)
    with torch.no_grad():
        expected = net(images)
        torch.testing.assert_close(torch.jit.trace(net, images, check_trace=False)(images), expected)
        torch.testing.assert_close(torch.export.export(net, (images,)).module()(images), expected)
        torch.testing.assert_close(torch.compile(net, backend="eager")(images), expected)


@pytest.mark.parametrize(("name", "options", "smallest"), [
    ("inceptionv3", {"aux_logits": False}, 107), ("inceptionv3", {}, 347), ("resnext50", {}, 33)])
def test_baselines_train_on_one_slice_from_the_readmes_sizes(name, options, smallest):
    """The README's limits of batch normalisation: below them a batch of one slice has one value per channel."""
    net = build_model(name, 1, 2, **options).train()
    assert net(_images(1, 1, smallest, smallest)).shape == (1, 2)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        net(_images(1, 1, smallest - 1, smallest - 1))
