"""Synthetic heads and brain tumours for MRI phantoms: pure, seeded, vectorised numpy.

A head is an ellipsoidal brain (white matter, a cortical ribbon folded along the zero crossings
of a smooth random field, sulcal and interhemispheric CSF, deep grey matter, lateral and third
ventricles) inside CSF, skull and scalp shells. Everything is laid out in *normalised*
coordinates ``(lr, ap, si)``, in which the brain is the unit ball, so the same code draws a
3-D volume (array axes ``(lr, ap, si)``, e.g. BraTS ``240 x 240 x 155``) or a 2-D slice
(array axes ``(vertical, horizontal)`` = ``(ap, lr)``, taken at the normalised height
``level``). Tumours are irregular blobs: an ellipsoid whose radius is modulated by a smooth
random field. Images are rendered from tissue labels through a per-modality contrast table
(T1: WM > GM > CSF; T2: CSF bright; FLAIR: CSF dark, oedema bright; T1ce: enhancing tumour
bright), with per-case contrast jitter, tissue texture, a multiplicative bias field, a random
gain and Rician noise.

References:
    Collins et al., "Design and construction of a realistic digital brain phantom", IEEE TMI
    17(3), 1998 (tissue-label phantoms rendered per MR sequence; the idea followed here).
    Gudbjartsson & Patz, "The Rician distribution of noisy MRI data", MRM 34(6), 1995.
    Higdon, "Space and space-time modeling using process convolutions", 2002 (smooth random
    fields as kernel-smoothed lattice noise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

MODALITIES = ("t1", "t1ce", "t2", "flair")
"""BraTS channel names, in the column order of :data:`CONTRAST`."""

TISSUES = ("background", "scalp", "skull", "csf", "gm", "wm", "necrosis", "enhancing", "core",
           "oedema", "infiltrative", "meningioma", "dura", "pituitary")
"""Tissue names; a tissue's code in a label map is its index here."""

CONTRAST = np.array([
    # t1    t1ce  t2    flair
    [0.00, 0.00, 0.00, 0.00],  # background
    [1.00, 1.00, 0.75, 0.70],  # scalp (fat: bright in T1)
    [0.06, 0.06, 0.05, 0.05],  # skull (cortical bone: dark everywhere)
    [0.22, 0.22, 1.35, 0.10],  # csf
    [0.58, 0.60, 0.78, 0.82],  # grey matter
    [0.85, 0.86, 0.50, 0.62],  # white matter
    [0.30, 0.30, 1.20, 0.55],  # necrosis
    [0.55, 1.40, 0.80, 0.95],  # enhancing tumour
    [0.45, 0.50, 1.05, 1.00],  # non-enhancing tumour core
    [0.55, 0.56, 1.00, 1.25],  # vasogenic oedema
    [0.50, 0.52, 1.10, 1.15],  # infiltrative low-grade tumour
    [0.56, 1.30, 0.75, 0.78],  # meningioma (homogeneous enhancement)
    [0.50, 1.15, 0.60, 0.60],  # dural tail
    [0.55, 1.15, 0.80, 0.80],  # pituitary adenoma
], dtype=np.float32)
"""Relative signal, shape ``(len(TISSUES), len(MODALITIES))``."""

TumourKind = Literal["hgg", "lgg", "glioma", "meningioma", "pituitary"]

_CODE = {name: code for code, name in enumerate(TISSUES)}
_MIN_SPACING = 1.5
_BRAIN_SEMI_AXES_3D = (0.28, 0.37, 0.34)
_BRAIN_CENTRE_3D = (0.50, 0.52, 0.47)
_BRAIN_SEMI_AXES_2D = (0.36, 0.30)
_OUTLINE = 0.03
_FISSURE = 0.012


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` as an int, or raise naming the argument.

    Raises:
        TypeError: ``value`` is not an integer (bools are rejected).
        ValueError: ``value`` is below ``minimum`` or above ``maximum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: got {value!r} ({type(value).__name__}), expected an integer")
    if value < minimum or (maximum is not None and value > maximum):
        expected = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ValueError(f"{name}: got {value}, expected an integer {expected}")
    return int(value)


def smooth_noise(shape: Sequence[int], spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Draw a smooth Gaussian random field, standardised to mean 0 and standard deviation 1.

    The field is white noise on a lattice of the given spacing convolved with a Gaussian kernel
    of the same width (a process convolution, Higdon 2002), evaluated separably: one small
    matrix product per axis, so a ``240 x 240 x 155`` field costs a fraction of a second.

    Args:
        shape: Output shape (any number of axes).
        spacing: Correlation length in voxels, > 0.
        rng: Random generator.

    Returns:
        float32 array of ``shape``.
    """
    if not spacing > 0:
        raise ValueError(f"spacing: got {spacing}, expected a positive number of voxels")
    nodes = [int(np.ceil(n / spacing)) + 4 for n in shape]
    field = rng.standard_normal(nodes, dtype=np.float32)
    for axis, (n, m) in enumerate(zip(shape, nodes)):
        offsets = np.arange(n, dtype=np.float32)[:, None] - (np.arange(m, dtype=np.float32) - 2) * spacing
        kernel = np.exp(-0.5 * (offsets / spacing) ** 2).astype(np.float32)
        field = np.moveaxis(np.tensordot(kernel, field, axes=(1, axis)), 0, axis)
    field = np.ascontiguousarray(field)
    field -= field.mean()
    field /= max(float(field.std()), 1e-12)
    return field


@dataclass(frozen=True)
class Head:
    """A head as tissue labels plus the normalised coordinates tumours are placed in.

    Attributes:
        tissue: uint8 tissue codes (indices into :data:`TISSUES`), shape ``shape``.
        brain: bool brain mask (the skull-stripping mask), shape ``shape``.
        radius: float32 normalised brain radius with the outline's irregularity (< 1 in the
            brain, CSF up to 1.05, skull up to 1.13, scalp up to 1.22), shape ``shape``.
        lr, ap, si: Normalised coordinates broadcastable to ``shape`` (float32 arrays; ``si``
            is a float for a 2-D slice, its height).
        scale: Mean brain semi-axis in voxels (converts normalised lengths to voxels).
    """

    tissue: np.ndarray
    brain: np.ndarray
    radius: np.ndarray
    lr: np.ndarray
    ap: np.ndarray
    si: np.ndarray | float
    scale: float

    @property
    def shape(self) -> tuple[int, ...]:
        return self.tissue.shape


@dataclass(frozen=True)
class Lesion:
    """A tumour drawn into a head.

    Attributes:
        tissue: uint8 tissue codes inside the lesion, 0 elsewhere.
        seg: uint8 labels in BraTS convention: 1 necrotic or non-enhancing core, 2 oedema or
            infiltration, 4 enhancing tumour; extra-axial and pituitary tumours are labelled 1.
        mask: bool tumour mask as the source dataset annotates it (BraTS: ``seg > 0``; Jun
            Cheng: the tumour without surrounding oedema or dural tail).
        heterogeneity: Amplitude of the smooth intensity variation inside the lesion.
    """

    tissue: np.ndarray
    seg: np.ndarray
    mask: np.ndarray
    heterogeneity: float


@dataclass(frozen=True)
class Phantom:
    """Rendered images with their ground truth (see :func:`head_volume`)."""

    images: dict[str, np.ndarray]
    brain: np.ndarray
    seg: np.ndarray
    mask: np.ndarray


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    if len(shape) not in (2, 3):
        raise ValueError(f"shape: got {tuple(shape)}, expected 2 axes (a slice) or 3 (a volume)")
    return tuple(check_int(f"shape[{axis}]", n, 8) for axis, n in enumerate(shape))


def _axis(n: int, centre: float, semi: float, ndim: int, axis: int) -> np.ndarray:
    """Normalised coordinate along one array axis, shaped to broadcast."""
    coord = (np.arange(n, dtype=np.float32) - np.float32(centre)) / np.float32(semi)
    return coord.reshape([-1 if k == axis else 1 for k in range(ndim)])


def _ellipsoid(lr, ap, si, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Normalised distance to ``centre`` in units of ``radii`` (< 1 inside the ellipsoid)."""
    return np.sqrt(((lr - centre[0]) / radii[0]) ** 2 + ((ap - centre[1]) / radii[1]) ** 2
                   + ((si - centre[2]) / radii[2]) ** 2)


def head_anatomy(shape: Sequence[int], rng: np.random.Generator, level: float = 0.0) -> Head:
    """Draw a head: tissue labels, brain mask and normalised coordinates.

    Args:
        shape: ``(lr, ap, si)`` for a volume, or ``(rows, cols)`` for a slice; each >= 8.
        rng: Random generator (head size and position, outline, folding pattern).
        level: Normalised height of a 2-D slice in ``(-1, 1)`` (0 = brain centre); ignored for
            volumes. The number of random draws does not depend on it, so slices of one patient
            at several levels share their anatomy when drawn from equally seeded generators.

    Returns:
        The head. A volume's brain spans about the middle two thirds of the ``si`` axis, so the
        first and last slices are outside the head.
    """
    shape = _check_shape(shape)
    if not -1.0 < level < 1.0:
        raise ValueError(f"level: got {level}, expected a normalised height in (-1, 1)")
    ndim = len(shape)
    size = rng.uniform(0.94, 1.04) * rng.uniform(0.97, 1.03, 3)
    shift = rng.uniform(-0.02, 0.02, 3)
    if ndim == 3:
        semi = [f * s * n for f, s, n in zip(_BRAIN_SEMI_AXES_3D, size, shape)]
        centre = [(c + d) * n for c, d, n in zip(_BRAIN_CENTRE_3D, shift, shape)]
        lr, ap, si = (_axis(shape[k], centre[k], semi[k], 3, k) for k in range(3))
    else:
        semi = [f * s * n for f, s, n in zip(_BRAIN_SEMI_AXES_2D, size, shape)]
        centre = [(0.5 + d) * n for d, n in zip(shift, shape)]
        ap, lr = (_axis(shape[k], centre[k], semi[k], 2, k) for k in range(2))
        si = np.float32(level)
    scale = float(np.mean(semi))
    outline = np.clip(smooth_noise(shape, max(_MIN_SPACING, 0.3 * scale), rng), -1.5, 1.5)
    # An egg-shaped brain, wider at the back, with an irregular outline.
    radius = np.sqrt((lr / (1 + 0.08 * ap)) ** 2 + ap ** 2 + si ** 2) * (1 + _OUTLINE * outline)
    folds = smooth_noise(shape, max(_MIN_SPACING, 0.06 * scale), rng)

    tissue = np.zeros(shape, dtype=np.uint8)
    for limit, name in ((1.22, "scalp"), (1.13, "skull"), (1.05, "csf"), (1.0, "wm")):
        tissue[radius < limit] = _CODE[name]
    brain = radius < 1.0
    grey = brain & ((radius > 0.87 + 0.03 * folds) | ((np.abs(folds) < 0.45) & (radius > 0.65))
                    | (np.abs(lr) < 2.5 * _FISSURE) & (radius > 0.4))
    grey |= _ellipsoid(np.abs(lr), ap, si, (0.21, 0.05, -0.05), (0.12, 0.2, 0.16)) < 1
    csf = brain & (((np.abs(folds) < 0.12) & (radius > 0.75)) | (np.abs(lr) < _FISSURE) & (radius > 0.45))
    bend = 0.03 * ap ** 2
    csf |= _ellipsoid(np.abs(lr) - bend, ap, si, (0.1, -0.08, 0.12), (0.075, 0.38, 0.2)) < 1
    csf |= (np.abs(lr) < 0.02) & (np.abs(ap - 0.05) < 0.12) & (np.abs(si + 0.05) < 0.15)
    tissue[grey] = _CODE["gm"]
    tissue[csf & brain] = _CODE["csf"]
    return Head(tissue=tissue, brain=brain, radius=radius.astype(np.float32), lr=lr, ap=ap, si=si,
                scale=scale)


def _blob(head: Head, centre: Sequence[float], radii: Sequence[float], roughness: float,
          rng: np.random.Generator) -> np.ndarray:
    """Normalised distance for an irregular blob (< 1 inside); its centre is always inside."""
    spacing = max(_MIN_SPACING, 0.45 * float(np.mean(radii)) * head.scale)
    factor = np.clip(1 + roughness * smooth_noise(head.shape, spacing, rng), 0.6, 1.5)
    return _ellipsoid(head.lr, head.ap, head.si, centre, radii) / factor


def _direction(head: Head, rng: np.random.Generator, si_centre: float | None,
               flatten: float) -> tuple[float, float, float]:
    """A random direction; for a slice, in its plane at height ``si_centre`` (default: its own)."""
    if head.tissue.ndim == 3:
        v = rng.standard_normal(3) * (1.0, 1.0, flatten)
        v /= np.linalg.norm(v)
        return float(v[0]), float(v[1]), float(v[2])
    angle = rng.uniform(0, 2 * np.pi)
    height = float(head.si if si_centre is None else si_centre)
    in_plane = np.sqrt(max(1.0 - height ** 2, 0.05))
    return in_plane * np.cos(angle), in_plane * np.sin(angle), height


def _parenchymal_centre(head: Head, rng: np.random.Generator, depth: tuple[float, float],
                        si_centre: float | None) -> tuple[float, float, float]:
    lr, ap, si = _direction(head, rng, si_centre, flatten=0.6)
    rho = rng.uniform(*depth)
    if head.tissue.ndim == 3:
        return rho * lr, rho * ap, rho * si
    return rho * lr, rho * ap, si


def _lesion(seg: np.ndarray, tissue_of_label: dict[int, str], mask: np.ndarray,
            heterogeneity: float) -> Lesion:
    lut = np.zeros(5, dtype=np.uint8)
    for label, name in tissue_of_label.items():
        lut[label] = _CODE[name]
    return Lesion(tissue=lut[seg], seg=seg, mask=mask, heterogeneity=heterogeneity)


def hgg_lesion(head: Head, rng: np.random.Generator, si_centre: float | None = None) -> Lesion:
    """High-grade glioma: enhancing ring (4) around necrosis (1) in wide oedema (2).

    Located in the hemispheric parenchyma; the oedema spares CSF spaces. ``si_centre`` pins the
    tumour's normalised height (2-D slices of one patient); by default it is random (volumes)
    or the slice's own height.
    """
    centre = _parenchymal_centre(head, rng, (0.25, 0.6), si_centre)
    radii = rng.uniform(0.18, 0.28) * rng.uniform(0.8, 1.2, 3)
    core = _blob(head, centre, radii, 0.25, rng)
    oedema = _blob(head, centre, radii * rng.uniform(1.5, 2.1), 0.35, rng)
    wall = rng.uniform(0.2, 0.4)
    seg = np.zeros(head.shape, dtype=np.uint8)
    seg[(oedema < 1) & head.brain & (head.tissue != _CODE["csf"])] = 2
    seg[(core < 1) & head.brain] = 4
    seg[(core < 1 - wall) & head.brain] = 1
    return _lesion(seg, {1: "necrosis", 2: "oedema", 4: "enhancing"}, seg > 0, 0.15)


def lgg_lesion(head: Head, rng: np.random.Generator, si_centre: float | None = None) -> Lesion:
    """Low-grade glioma: a T2/FLAIR-bright infiltrative region (2) with a smaller off-centre
    non-enhancing core (1); no enhancement, no wide oedema halo. See :func:`hgg_lesion`."""
    centre = np.array(_parenchymal_centre(head, rng, (0.3, 0.7), si_centre))
    radii = rng.uniform(0.26, 0.38) * rng.uniform(0.8, 1.2, 3)
    lesion = _blob(head, centre, radii, 0.3, rng)
    core = _blob(head, centre + radii * rng.uniform(-0.25, 0.25, 3), radii * rng.uniform(0.35, 0.5),
                 0.3, rng)
    seg = np.zeros(head.shape, dtype=np.uint8)
    seg[(lesion < 1) & head.brain & (head.tissue != _CODE["csf"])] = 2
    seg[(core < 1) & (lesion < 0.7) & (seg == 2)] = 1
    return _lesion(seg, {1: "core", 2: "infiltrative"}, seg > 0, 0.10)


def glioma_lesion(head: Head, rng: np.random.Generator, si_centre: float | None = None) -> Lesion:
    """Glioma as in the Jun Cheng set: inside the parenchyma, heterogeneous; ring-enhancing
    (mask: core and ring, not oedema) in 60 % of cases, otherwise infiltrative (mask: all)."""
    if rng.random() < 0.6:
        lesion = hgg_lesion(head, rng, si_centre)
        mask = (lesion.seg == 1) | (lesion.seg == 4)
    else:
        lesion = lgg_lesion(head, rng, si_centre)
        mask = lesion.seg > 0
    return Lesion(tissue=lesion.tissue, seg=lesion.seg, mask=mask, heterogeneity=0.25)


def meningioma_lesion(head: Head, rng: np.random.Generator, si_centre: float | None = None) -> Lesion:
    """Meningioma: extra-axial, centred on the brain surface (the convexity, for volumes),
    homogeneously enhancing, bounded by the skull, with an enhancing dural tail along the
    surface that is not part of the mask. See :func:`hgg_lesion` for ``si_centre``."""
    lr, ap, si = _direction(head, rng, si_centre, flatten=1.0)
    if head.tissue.ndim == 3:
        si = abs(si)
    else:  # just inside the surface, so that most of the tumour is intracranial, as in the real slices
        lr, ap = 0.93 * lr, 0.93 * ap
    # Sizes as in the real Jun Cheng slices: a meningioma covers about 2-4 % of the image.
    radii = rng.uniform(0.22, 0.34) * rng.uniform(0.85, 1.15, 3)
    blob = _blob(head, (lr, ap, si), radii, 0.12, rng)
    intracranial = head.radius < 1.05
    tumour = (blob < 1) & intracranial
    tail = (blob < 1.9) & (head.radius > 0.98) & intracranial & ~tumour
    seg = tumour.astype(np.uint8)
    tissue = np.where(tumour, _CODE["meningioma"], np.where(tail, _CODE["dura"], 0)).astype(np.uint8)
    return Lesion(tissue=tissue, seg=seg, mask=tumour, heterogeneity=0.04)


def pituitary_lesion(head: Head, rng: np.random.Generator, si_centre: float | None = None) -> Lesion:
    """Pituitary adenoma: small, on the midline at the skull base (sellar region): for a slice,
    below the centre of the image's vertical axis; for a volume, low and slightly anterior.
    See :func:`hgg_lesion` for ``si_centre``."""
    lr = rng.uniform(-0.03, 0.03)
    if head.tissue.ndim == 3:
        centre = (lr, rng.uniform(-0.15, 0.0), rng.uniform(-0.65, -0.5))
    else:
        centre = (lr, rng.uniform(0.25, 0.45), float(head.si if si_centre is None else si_centre))
    radii = rng.uniform(0.13, 0.2) * rng.uniform(0.85, 1.15, 3)  # about 1 % of a real slice
    tumour = _blob(head, centre, radii, 0.15, rng) < 1
    tissue = np.where(tumour, _CODE["pituitary"], 0).astype(np.uint8)
    return Lesion(tissue=tissue, seg=tumour.astype(np.uint8), mask=tumour, heterogeneity=0.08)


LESIONS: dict[str, Callable[..., Lesion]] = {
    "hgg": hgg_lesion, "lgg": lgg_lesion, "glioma": glioma_lesion,
    "meningioma": meningioma_lesion, "pituitary": pituitary_lesion,
}
"""Tumour drawing function per :data:`TumourKind`."""


def render(head: Head, lesion: Lesion | None, rng: np.random.Generator,
           modalities: Sequence[str] = MODALITIES) -> dict[str, np.ndarray]:
    """Render MR images of a head (with an optional lesion).

    Per image: tissue contrast from :data:`CONTRAST` jittered by ±8 % per tissue, 4 % tissue
    texture, lesion heterogeneity, a smooth multiplicative bias field (about ±12 %), a gain of
    300–1100 and Rician noise (1.5–4 % of the gain).

    Returns:
        Modality name -> float32 image of ``head.shape`` (non-negative; background is noise).
    """
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(f"modalities: got {list(modalities)}, expected a non-empty subset of {MODALITIES}")
    shape = head.shape
    tissue = head.tissue if lesion is None else np.where(lesion.tissue > 0, lesion.tissue, head.tissue)
    modulation = 1 + 0.04 * smooth_noise(shape, max(_MIN_SPACING, 0.025 * head.scale), rng)
    if lesion is not None:
        variation = smooth_noise(shape, max(_MIN_SPACING, 0.05 * head.scale), rng)
        modulation += np.where(lesion.tissue > 0, np.float32(lesion.heterogeneity) * variation, 0)
    images = {}
    for name in modalities:
        contrast = CONTRAST[:, MODALITIES.index(name)] * rng.uniform(0.92, 1.08, len(TISSUES))
        gain = rng.uniform(300, 1100)
        sigma = np.float32(rng.uniform(0.015, 0.04) * gain)
        bias = np.exp(0.12 * smooth_noise(shape, max(_MIN_SPACING, 0.7 * head.scale), rng))
        clean = contrast.astype(np.float32)[tissue] * modulation * bias * np.float32(gain)
        noise = rng.standard_normal((2, *shape), dtype=np.float32) * sigma
        images[name] = np.sqrt((clean + noise[0]) ** 2 + noise[1] ** 2)
    return images


def head_volume(shape: Sequence[int], rng: np.random.Generator, tumour: TumourKind | None = None,
                modalities: Sequence[str] = MODALITIES) -> Phantom:
    """Draw and render a head with an optional tumour, all from one generator.

    Args:
        shape: See :func:`head_anatomy`.
        rng: Random generator; the result depends only on its state and the arguments.
        tumour: Tumour kind (a key of :data:`LESIONS`), or None for a healthy head.
        modalities: Images to render (subset of :data:`MODALITIES`).

    Returns:
        The rendered images (float32), the bool brain mask, and uint8 ``seg`` (BraTS labels)
        and bool ``mask`` (zeros without a tumour), all of ``shape``.
    """
    if tumour is not None and tumour not in LESIONS:
        raise ValueError(f"tumour: got {tumour!r}, expected None or one of {sorted(LESIONS)}")
    head = head_anatomy(shape, rng)
    lesion = None if tumour is None else LESIONS[tumour](head, rng)
    images = render(head, lesion, rng, modalities)
    if lesion is None:
        return Phantom(images, head.brain, np.zeros(head.shape, np.uint8), np.zeros(head.shape, bool))
    return Phantom(images, head.brain, lesion.seg, lesion.mask)
