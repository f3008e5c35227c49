"""Tests of gpmodels.augment: resizing, rotation and flips of image/mask batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpmodels.augment import AugmentConfig, RandomFlipRotate, affine_matrices, resize_batch, resize_images, warp_batch
from storage.slicing import resize_masks


def _batch(height: int = 33, width: int = 34, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 2, height, width, generator=generator)
    masks = (torch.rand(batch, height, width, generator=generator) > 0.7).to(torch.uint8)
    return images, masks


def _warp(images, masks, angle: float, flip_h: bool = False, flip_v: bool = False):
    b = images.shape[0]
    theta = affine_matrices(torch.full((b,), angle), torch.full((b,), flip_h), torch.full((b,), flip_v),
                            *images.shape[-2:])
    return warp_batch(images, masks, theta)


@pytest.mark.parametrize(("flip_h", "flip_v", "dims"), [(True, False, (-1,)), (False, True, (-2,)),
                                                        (True, True, (-2, -1))])
def test_flips_mirror_images_and_masks_exactly(flip_h, flip_v, dims):
    images, masks = _batch()
    warped, warped_masks = _warp(images, masks, 0.0, flip_h, flip_v)
    torch.testing.assert_close(warped, images.flip(dims))
    assert torch.equal(warped_masks, masks.flip(dims))


def test_quarter_turn_matches_rot90_counter_clockwise():
    images, masks = _batch(32, 32)
    warped, warped_masks = _warp(images, masks, 90.0)
    torch.testing.assert_close(warped, torch.rot90(images, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    assert torch.equal(warped_masks, torch.rot90(masks, 1, dims=(-2, -1)))


def test_half_turn_on_odd_non_square_slices_is_a_double_flip():
    images, masks = _batch(33, 34)
    warped, warped_masks = _warp(images, masks, 180.0)
    torch.testing.assert_close(warped, images.flip((-2, -1)), atol=1e-5, rtol=0)
    assert torch.equal(warped_masks, masks.flip((-2, -1)))


def test_mask_stays_registered_to_its_image_at_any_angle():
    yy, xx = torch.meshgrid(torch.arange(33.0), torch.arange(34.0), indexing="ij")
    blob = (((yy - 12) / 6) ** 2 + ((xx - 20) / 4) ** 2 <= 1).to(torch.uint8)
    masks = blob.expand(2, 33, 34).clone()
    images = masks[:, None].float().repeat(1, 3, 1, 1)
    warped, warped_masks = _warp(images, masks, 37.0, flip_h=True)
    from_image = warped[:, 0] > 0.5
    from_mask = warped_masks.bool()
    iou = (from_image & from_mask).sum() / (from_image | from_mask).sum()
    assert iou > 0.85
    assert not torch.equal(from_mask, masks.bool())


def test_random_flip_rotate_is_seeded_and_resumable():
    images, masks = _batch(17, 19, batch=8)
    config = AugmentConfig()
    first, second, other = RandomFlipRotate(config, 5), RandomFlipRotate(config, 5), RandomFlipRotate(config, 6)
    out_first = first(images, masks)
    out_second = second(images, masks)
    assert torch.equal(out_first[0], out_second[0]) and torch.equal(out_first[1], out_second[1])
    assert not torch.equal(out_first[0], other(images, masks)[0])
    state = first.state_dict()
    expected = first(images, masks)[0]
    resumed = RandomFlipRotate(config, 0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed(images, masks)[0], expected)


def test_sampled_parameters_follow_the_config():
    augmenter = RandomFlipRotate(AugmentConfig(rotation=330.0, flip_p=0.5), seed=0)
    angles, flip_h, flip_v = augmenter.sample(4000)
    assert angles.abs().max() <= 330.0
    assert angles.min() < -300 and angles.max() > 300
    assert 0.45 < flip_h.float().mean() < 0.55 and 0.45 < flip_v.float().mean() < 0.55
    never = RandomFlipRotate(AugmentConfig(rotation=0.0, flip_p=0.0), seed=0)
    images, masks = _batch()
    out, out_masks = never(images, masks)
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)
    assert torch.equal(out_masks, masks)


def test_resize_shrinking_keeps_every_tumour_and_enlarging_is_nearest():
    images = torch.rand(2, 4, 33, 34)
    masks = torch.zeros(2, 33, 34, dtype=torch.uint8)
    masks[0, 32, 33] = 1
    small, small_masks = resize_batch(images, masks, 8)
    assert small.shape == (2, 4, 8, 8) and small_masks.shape == (2, 8, 8)
    assert small_masks.dtype == torch.uint8
    assert small_masks[0, 7, 7] == 1 and small_masks[0].sum() == 1 and small_masks[1].sum() == 0
    block = torch.tensor([[[1, 0], [0, 1]]], dtype=torch.uint8)
    _, big_masks = resize_batch(torch.rand(1, 1, 2, 2), block, 4)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.uint8)
    assert torch.equal(big_masks[0], expected)
    same = resize_batch(images[:, :, :33, :33], masks[:, :33, :33], 33)
    assert same[0].shape == (2, 4, 33, 33)


def test_resize_anti_aliases_when_shrinking():
    stripes = torch.zeros(1, 1, 64, 64)
    stripes[..., ::2] = 1.0
    small, _ = resize_batch(stripes, torch.zeros(1, 64, 64, dtype=torch.uint8), 16)
    torch.testing.assert_close(small, torch.full_like(small, 0.5), atol=0.05, rtol=0)


@pytest.mark.parametrize(("kwargs", "field"), [({"rotation": -1.0}, "rotation"), ({"flip_p": 1.5}, "flip_p")])
def test_augment_config_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**kwargs)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="images, masks"):
        resize_batch(torch.rand(2, 1, 8, 8), torch.zeros(2, 8, 9), 4)


@pytest.mark.parametrize("size", [5, 12, 20])
def test_resize_images_is_the_image_part_of_resize_batch(size):
    images = torch.rand(2, 3, 12, 12)
    masks = (torch.rand(2, 12, 12) > 0.5).to(torch.uint8)
    resized = resize_images(images, size)
    assert torch.equal(resized, resize_batch(images, masks, size)[0])
    # bilinear, anti-aliased when shrinking (resize_batch calls resize_images: the line above alone cannot fail)
    expected = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                               antialias=size < 12)
    torch.testing.assert_close(resized, expected)
    assert resize_images(images, 12) is images


@pytest.mark.parametrize(("height", "width", "size"), [(240, 240, 64), (240, 240, 128), (5, 5, 3), (33, 34, 8),
                                                       (3, 3, 7), (5, 5, 8), (20, 6, 10), (12, 12, 12)])
def test_resized_training_masks_follow_the_rule_of_ingestion(height, width, size):
    """Training shrank masks by overlapping max-pool windows (a pixel in two outputs: 240 -> 128 gave twice the
    tumour pixels of ingestion's rule) although its docstring said it used ingestion's rule."""
    generator = torch.Generator().manual_seed(height * width + size)
    masks = (torch.rand(4, height, width, generator=generator) > 0.97).to(torch.uint8)
    masks[0, 1, 1] = 1
    _, resized = resize_batch(torch.rand(4, 1, height, width), masks, size)
    assert resized.dtype == torch.uint8
    np.testing.assert_array_equal(resized.numpy(), resize_masks(masks.numpy(), size))


def test_the_two_flips_are_drawn_independently():
    """Each flip had its rate, but one shared draw would flip both axes together (a half turn) half the time."""
    _, flip_h, flip_v = RandomFlipRotate(AugmentConfig(flip_p=0.5), seed=3).sample(4000)
    both = (flip_h & flip_v).float().mean().item()
    assert abs(both - 0.25) < 0.03


def test_rotation_pads_images_with_their_border_and_masks_with_zeros():
    """Zero padding would put black corners into normalised slices whose background is not 0."""
    images = torch.full((1, 2, 16, 16), 3.0)
    warped, warped_masks = _warp(images, torch.ones(1, 16, 16, dtype=torch.uint8), 45.0)
    torch.testing.assert_close(warped, images)
    assert warped_masks[0, 0, 0] == 0 and warped_masks[0, 8, 8] == 1


def test_quarter_turn_of_a_non_square_slice_is_a_rotation_in_pixels():
    """A pixel 5 right of and 2 below the centre of a 21 x 41 slice ends 5 above and 2 right of it."""
    masks = torch.zeros(1, 21, 41, dtype=torch.uint8)
    masks[0, 10 + 2, 20 + 5] = 1
    _, turned = _warp(torch.zeros(1, 1, 21, 41), masks, 90.0)
    assert turned.nonzero().tolist() == [[0, 10 - 5, 20 + 2]]
