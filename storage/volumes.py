"""Reading one 3-D case (BraTS or manifest) into normalised, labelled slices."""

from __future__ import annotations

import numpy as np

from storage.cases import SliceBatch, VolumeCase
from storage.errors import CaseRejected
from storage.ingest_config import IngestConfig
from storage.nifti import load_nifti
from storage.normalise import background_values, paper_scale, robust_scale
from storage.slicing import axial_slices, resize_images, resize_masks, volume_slices


def read_volume_case(case: VolumeCase, classes: list[str], config: IngestConfig) -> SliceBatch:
    """Decode, check, normalise, slice and resize one volume case.

    Args:
        case: the case's files and class.
        classes: the store's class names; ``classes[0]`` is tumour-free.
        config: image size and normalisation.

    Returns:
        The case's non-blank slices (``images`` float16 ``(n, C, S, S)``).

    Raises:
        CaseRejected: any file is unreadable, shapes differ, labels are outside
            the allowed set, or the class is unknown.
    """
    if case.label not in classes:
        raise CaseRejected(case.files[0], f"class {case.label!r} not among {classes}")
    volumes = {name: load_nifti(path) for name, path in case.channels.items()}
    first_name, first = next(iter(volumes.items()))
    for name, vol in volumes.items():
        if vol.data.shape != first.data.shape:
            raise CaseRejected(case.channels[name], f"shape {vol.data.shape} differs from "
                                                    f"{first_name}'s {first.data.shape}")
    sources = {str(case.channels[name]): vol.sha256 for name, vol in volumes.items()}
    seg = None
    if case.seg is not None:
        seg_vol = load_nifti(case.seg)
        sources[str(case.seg)] = seg_vol.sha256
        if seg_vol.data.shape != first.data.shape:
            raise CaseRejected(case.seg, f"segmentation shape {seg_vol.data.shape} differs from "
                                         f"the images' {first.data.shape}")
        seg = seg_vol.data if seg_vol.data.dtype.kind in "iu" else np.rint(seg_vol.data).astype(np.int16)
        low = int(seg.min())
        found = set((np.flatnonzero(np.bincount((seg.ravel() - low).astype(np.intp))) + low).tolist())
        allowed = case.allowed_seg_labels
        if min(found) < 0 or (allowed is not None and not found <= allowed):
            bad = sorted(found - allowed) if allowed is not None else sorted(v for v in found if v < 0)
            raise CaseRejected(case.seg, f"segmentation labels {bad} outside "
                                         f"{sorted(allowed) if allowed is not None else 'the non-negative integers'}")
    stack = axial_slices([vol.data for vol in volumes.values()])
    seg_slices = seg.T if seg is not None else None
    images, masks, labels, slice_index = volume_slices(stack, seg_slices, classes.index(case.label))
    if labels.size == 0:
        raise CaseRejected(case.files[0], "every axial slice is blank")
    if images.shape[-2] != images.shape[-1] and config.image_size is None:
        raise CaseRejected(case.files[0], f"non-square slices {images.shape[-2:]} need --image-size")
    size = config.image_size or images.shape[-1]
    native = images.shape[-2:] == (size, size)
    if config.normalisation == "robust":
        images = robust_scale(images, background_values(stack), dtype=np.float16 if native else np.float32)
    else:
        images = paper_scale(images)
    return SliceBatch(
        patient=case.patient_id,
        images=images.astype(np.float16, copy=False) if native else resize_images(images, size).astype(np.float16),
        masks=resize_masks(masks, size),
        labels=labels,
        slice_index=slice_index,
        sources=sources,
        source_shape=tuple(int(s) for s in first.data.shape),
        affine=first.affine,
    )
