import numpy as np
import pytest

import nibabel as nib

from storage.slicing import axial_axes, axial_slices, blank_slices, resize_images, resize_masks, volume_slices


def test_blank_rule_uses_constancy_not_zero():
    slices = np.full((4, 2, 5, 6), 3.5, dtype=np.float32)  # constant non-zero background
    slices[1, 0, 1:3, 1:3] = 9.0  # one channel varies on slice 1
    slices[3] = 0.0
    slices[3, 1, 0, 0] = 1.0  # slice 3 varies in channel 1 only
    assert blank_slices(slices).tolist() == [True, False, True, False]


def test_axial_slices_orientation():
    vol = np.asfortranarray(np.arange(2 * 3 * 4).reshape(2, 3, 4))
    out = axial_slices([vol, vol + 100])
    assert out.shape == (4, 2, 3, 2)
    assert np.array_equal(out[1, 0], vol[:, :, 1].T) and np.array_equal(out[2, 1], vol[:, :, 2].T + 100)


def test_volume_slices_labels_and_drops_blank():
    slices = np.zeros((5, 1, 8, 8), dtype=np.int16)
    slices[1:4, 0, 2:6, 2:6] = 100
    seg = np.zeros((5, 8, 8), dtype=np.int16)
    seg[2, 3, 3] = 4
    images, masks, labels, idx = volume_slices(slices, seg, tumour_class=2)
    assert idx.tolist() == [1, 2, 3]
    assert labels.tolist() == [0, 2, 0]
    assert images.shape == (3, 1, 8, 8) and masks.dtype == np.uint8
    assert masks[1].sum() == 1 and masks[0].sum() == 0


@pytest.mark.parametrize("size", [5, 16, 33])
def test_resize_masks_never_loses_a_tumour(size):
    rng = np.random.default_rng(0)
    masks = np.zeros((20, 34, 34), dtype=np.uint8)
    for i in range(20):
        masks[i, rng.integers(34), rng.integers(34)] = 1  # single-pixel tumours
    out = resize_masks(masks, size)
    assert out.shape == (20, size, size)
    assert (out.reshape(20, -1).max(axis=1) == 1).all()
    assert set(np.unique(out)) <= {0, 1}


def test_resize_masks_enlarge_is_nearest():
    mask = np.array([[[1, 0], [0, 0]]], dtype=np.uint8)
    out = resize_masks(mask, 4)
    assert out[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_resize_images_shapes_and_identity():
    images = np.random.default_rng(1).random((3, 2, 33, 33)).astype(np.float32)
    assert resize_images(images, 33) is images or np.array_equal(resize_images(images, 33), images)
    small = resize_images(images, 16)
    assert small.shape == (3, 2, 16, 16) and small.dtype == np.float32
    assert 0.0 <= small.min() and small.max() <= 1.0


def test_volume_slices_masks_every_tumour_label():
    # BraTS labels: 1 necrotic core, 2 oedema, 4 enhancing; slice 1 holds label 1 only
    slices = np.zeros((3, 1, 4, 4), dtype=np.int16)
    slices[:, 0, 0, 0] = 50
    seg = np.zeros((3, 4, 4), dtype=np.uint8)
    seg[1, 1:3, 1] = 1
    seg[2, 0, :3] = [1, 2, 4]
    images, masks, labels, idx = volume_slices(slices, seg, tumour_class=3)
    assert labels.tolist() == [0, 3, 3] and masks[1].sum() == 2
    np.testing.assert_array_equal(masks, (seg > 0).astype(np.uint8))


def test_volume_slices_of_an_all_blank_volume_keeps_nothing():
    slices = np.zeros((4, 2, 6, 5), dtype=np.int16)
    seg = np.zeros((4, 6, 5), dtype=np.uint8)
    images, masks, labels, idx = volume_slices(slices, seg, tumour_class=1)
    assert images.shape == (0, 2, 6, 5) and masks.shape == (0, 6, 5)
    assert labels.shape == (0,) and idx.shape == (0,)


def _permuted(affine: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    """The affine of ``volume.transpose(order)``, for a volume with ``affine``."""
    out = affine.copy()
    out[:, :3] = affine[:, list(order)]
    return out


LPS = np.diag([-0.9, -0.9, 1.2, 1.0])  # BraTS's orientation


@pytest.mark.parametrize("order", [(2, 0, 1), (1, 2, 0), (0, 2, 1), (2, 1, 0)])
def test_axial_axes_undoes_any_storage_order_with_foot_head_not_third(order):
    """A volume stored with foot-head as its first or second axis is put back into the axial order."""
    stored = _permuted(LPS, order)
    axes = axial_axes(stored, (2, 3, 4))
    assert sorted(axes) == [0, 1, 2]
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    np.testing.assert_array_equal(volume.transpose(order).transpose(axes), volume)
    assert nib.aff2axcodes(_permuted(stored, axes)) == nib.aff2axcodes(LPS)


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 0, 2)])
def test_an_axial_stack_keeps_its_order_whatever_its_in_plane_axes(order):
    """Foot-head third already: the slices are axial, and their in-plane axes are left as stored."""
    assert axial_axes(_permuted(LPS, order), (240, 240, 155)) == (0, 1, 2)


def test_a_single_sagittal_image_is_not_cut_into_one_voxel_strips():
    sagittal = _permuted(LPS, (1, 2, 0))  # A, S, L: foot-head second, left-right third
    assert axial_axes(sagittal, (16, 16, 1)) == (0, 1, 2)
    assert axial_axes(sagittal, (16, 16, 2)) == (2, 0, 1)
    assert axial_axes(sagittal) == (2, 0, 1)  # shape unknown


def test_axial_axes_of_a_sagittal_3d_t1_and_an_oblique_axial():
    sagittal = np.array([[0, 0, -1.0, 90], [1.0, 0, 0, -126], [0, 1.0, 0, -72], [0, 0, 0, 1]])  # A, S, L
    assert nib.aff2axcodes(sagittal) == ("A", "S", "L") and axial_axes(sagittal) == (2, 0, 1)
    tilt = np.deg2rad(30)  # an axial stack tilted 30 degrees about left-right stays axial
    oblique = np.eye(4)
    oblique[1:3, 1:3] = [[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]]
    assert axial_axes(oblique) == (0, 1, 2)


def _sagittal_without_first_axis() -> np.ndarray:
    affine = _permuted(LPS, (1, 2, 0))
    affine[:3, 0] = 0.0  # a zero voxel size in the header
    return affine


@pytest.mark.parametrize("affine", [np.zeros((4, 4)), _sagittal_without_first_axis(),
                                    np.full((4, 4), np.nan), np.eye(3)])
def test_axial_axes_without_an_orientation_keeps_the_stored_order(affine):
    assert axial_axes(affine) == (0, 1, 2)


def test_resize_images_shrinks_with_anti_aliasing():
    """A one-pixel checkerboard shrunk 32 -> 10 must blur to its mean (0.5), not alias into 0.18/0.82 stripes."""
    board = (np.indices((32, 32)).sum(axis=0) % 2).astype(np.float32)
    images = np.stack([np.stack([board, 1.0 - board])] * 2)  # (2, 2, 32, 32)
    small = resize_images(images, 10)
    assert small.shape == (2, 2, 10, 10)
    assert np.abs(small - 0.5).max() < 0.02


def test_resize_masks_enlarge_samples_pixel_centres():
    """3 -> 7 px: output pixel i takes source floor((i + 0.5) * 3 / 7) = 0 0 1 1 1 2 2 (not floor(i * 3 / 7))."""
    mask = np.array([[[1, 0, 0], [0, 0, 0], [0, 0, 1]]], dtype=np.uint8)
    out = resize_masks(mask, 7)
    assert out[0].tolist() == [[1, 1, 0, 0, 0, 0, 0],
                               [1, 1, 0, 0, 0, 0, 0],
                               [0, 0, 0, 0, 0, 0, 0],
                               [0, 0, 0, 0, 0, 0, 0],
                               [0, 0, 0, 0, 0, 0, 0],
                               [0, 0, 0, 0, 0, 1, 1],
                               [0, 0, 0, 0, 0, 1, 1]]


def test_resize_masks_shrink_keeps_each_pixel_in_its_own_place():
    """Any-overlap shrinking of one axis (7 -> 3: columns 0-1, 2-3, 4-6) neither flips nor shifts the mask."""
    mask = np.zeros((1, 3, 7), dtype=np.uint8)
    mask[0, 0, 0] = 1
    mask[0, 2, 3] = 1
    assert resize_masks(mask, 3)[0].tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]
    mask[0, 2, 3], mask[0, 2, 4] = 0, 1
    assert resize_masks(mask, 3)[0].tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]
