"""Tests of the report's figures: colour mapping as matplotlib does it, pixel-exact panel composition,
colour-bar ticks as matplotlib's colour bar places them, and charts whose text stays inside the figure."""

from __future__ import annotations

import io

import numpy as np
import pytest
import zarr
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from gpmodels import report_figures
from gpmodels.postprocess import ThresholdConfig
from gpmodels.report_figures import confusion_png, dice_histogram_png, example_png, posthoc_png, training_curves_png
from gpmodels.report_panels import (
    _TICK_FONT,
    DPI,
    Panel,
    colour_bar_ticks,
    colour_map,
    grey_panel,
    map_panel,
    panel_scale,
    panels_png,
    wrap_title,
)

PALETTE = np.array([[0, 114, 178], [230, 159, 0], [0, 158, 115], [204, 121, 167]], np.uint8)
RED = np.array([255, 0, 0], np.uint8)


def _decode(png: bytes) -> np.ndarray:
    """uint8 ``(H, W, 3)`` pixels of PNG bytes."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _edges_are_white(pixels: np.ndarray) -> bool:
    """Nothing drawn on the outermost rows and columns (so no text is cut off at the figure's edge)."""
    return all((edge >= 250).all() for edge in (pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]))


@pytest.mark.parametrize("cmap, vmin, vmax", [("RdBu_r", -2.5, 2.5), ("magma", 0.0, 0.7), ("gray", 0.0, 1.0)])
def test_colour_map_equals_matplotlib(cmap, vmin, vmax):
    values = np.linspace(vmin - 1, vmax + 1, 33 * 34, dtype=np.float32).reshape(33, 34)
    expected = ScalarMappable(Normalize(vmin, vmax), cmap).to_rgba(values, bytes=True)[..., :3]
    got = colour_map(values, cmap, vmin, vmax)
    assert got.dtype == np.uint8 and got.shape == (33, 34, 3)
    np.testing.assert_array_equal(got, expected)


def test_colour_map_shows_nan_as_white():
    assert colour_map(np.array([np.nan, 0.0]), "magma", 0.0, 1.0)[0].tolist() == [255, 255, 255]


def test_map_panel_limits_and_colours():
    signed = map_panel(np.array([[-0.5, 0.0], [0.25, 2.0]]), "raw", signed=True)
    assert signed.bar == ("RdBu_r", -2.0, 2.0) and signed.title == "raw"
    np.testing.assert_array_equal(signed.rgb[0, 1], colour_map(np.array(0.0), "RdBu_r", -1.0, 1.0))
    unsigned = map_panel(np.array([[0.0, 3.0]]), "suppressed", signed=False)
    assert unsigned.bar == ("magma", 0.0, 3.0)
    assert map_panel(np.zeros((3, 5)), "flat").bar == ("magma", 0.0, 1.0)
    assert map_panel(np.array([[-1.0, 0.5]]), "auto").bar[0] == "RdBu_r"
    assert grey_panel(np.full((4, 6), 7.0), "input").rgb.shape == (4, 6, 3)


def test_panel_scale_comes_closest_to_the_side():
    assert panel_scale((96, 96), 160) == 2
    assert panel_scale((33, 34), 160) == 5
    assert panel_scale((240, 240), 160) == 1
    assert panel_scale((512, 300), 160) == 1


@pytest.mark.parametrize("vmin, vmax, length", [(-23.1, 23.1, 192), (0.0, 1.63, 192), (-0.0072, 0.0072, 96),
                                                (0.0, 4e-05, 130), (-1.0, 1.0, 60)])
def test_colour_bar_ticks_match_matplotlib(vmin, vmax, length):
    height = length + 40
    fig = Figure(figsize=(2.0, height / DPI), dpi=DPI)
    cax = fig.add_axes((0.1, 20 / height, 0.05, length / height))
    bar = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), "RdBu_r"), cax=cax)
    bar.ax.tick_params(labelsize=_TICK_FONT)
    expected = [t for t in bar.get_ticks() if vmin - 1e-12 <= t <= vmax + 1e-12]
    np.testing.assert_allclose(colour_bar_ticks(vmin, vmax, length), expected, atol=1e-9 * (vmax - vmin))


@pytest.mark.parametrize("side, scale", [(34, 1), (70, 2), (100, 3)])
def test_panels_png_pastes_pixel_exact_tiles(side, scale):
    rng = np.random.default_rng(0)
    rgb = PALETTE[rng.integers(0, len(PALETTE), size=(33, 34))]
    rgb[0, 0] = RED
    rows = [[Panel(rgb, "a"), Panel(rgb, "b", ("magma", 0.0, 1.0))], [Panel(rgb), Panel(rgb, bar=("gray", 0, 1))]]
    pixels = _decode(panels_png(rows, "four panels", side, legend={"one": "#009E73"})).astype(int)
    # one red square of scale x scale pixels at each panel's top-left corner, in a 2 x 2 grid
    red = np.argwhere((np.abs(pixels - RED) <= 4).all(axis=2))
    tops, lefts = np.unique(red[:, 0]), np.unique(red[:, 1])
    assert len(red) == 4 * scale * scale and len(tops) == 2 * scale and len(lefts) == 2 * scale
    expected = np.repeat(np.repeat(rgb, scale, 0), scale, 1).astype(int)
    for top in tops[::scale]:
        for left in lefts[::scale]:
            tile = pixels[top:top + 33 * scale, left:left + 34 * scale]
            assert tile.shape == expected.shape
            assert np.abs(tile - expected).max() <= 4
    assert _edges_are_white(pixels)


def test_panels_png_rejects_mixed_shapes():
    with pytest.raises(ValueError, match="shapes"):
        panels_png([[Panel(np.zeros((3, 4, 3), np.uint8)), Panel(np.zeros((4, 3, 3), np.uint8))]], "t", 10)
    with pytest.raises(ValueError, match="shapes"):
        panels_png([], "t", 10)


def test_example_and_posthoc_figures_have_their_panels():
    rng = np.random.default_rng(1)
    image, raw = rng.normal(size=(33, 34)), rng.normal(size=(33, 34))
    truth = np.zeros((33, 34), bool)
    truth[10:20, 5:15] = True
    example = _decode(example_png(image, raw, raw > 1, truth, "LGG, median", threshold=1.0))
    scale = panel_scale((33, 34), 160)
    assert example.shape[1] > 5 * 34 * scale and example.shape[0] > 33 * scale
    assert _edges_are_white(example)
    posthoc = _decode(posthoc_png(image[None].repeat(3, 0), {"gp": raw[None].repeat(3, 0),
                                                             "guided_backprop": np.abs(raw)[None].repeat(3, 0)}, "t"))
    assert posthoc.shape[0] > 3 * 33 * scale and posthoc.shape[1] > 3 * 34 * scale
    with pytest.raises(ValueError, match="maps"):
        posthoc_png(image[None], {"gp": raw}, "t")


def test_chart_text_stays_inside_the_figure():
    long_title = "GP-ShuffleUNet (pool=maps, width=8) (1 run(s))"
    confusion = confusion_png(np.array([[1200, 3], [4, 5]]), ["tumour-free", "meningioma"], long_title)
    assert _edges_are_white(_decode(confusion))
    histogram = dice_histogram_png(np.r_[np.zeros(12000), np.linspace(0, 1, 33)], "GP-UNet")
    assert _edges_are_white(_decode(histogram))
    epochs = np.arange(21.0)
    curves = training_curves_png({"fold 0": {"val_loss": (epochs, 1e4 / (1 + epochs)),
                                             "train_loss": (epochs, 2e4 / (1 + epochs)),
                                             "val_f1": (epochs, epochs / 20)}}, "BraTS: GP-UNet")
    assert _edges_are_white(_decode(curves))


@pytest.mark.parametrize("classes", [3, 5])
def test_long_class_names_fit_the_confusion_matrix(classes):
    """A manifest label of 40 characters ("Glioblastoma multiforme, IDH-wildtype, WHO grade 4") left the axes no
    room, and `gpseg report` died with matplotlib's "left cannot be >= right"."""
    names = ["Glioblastoma multiforme, IDH-wildtype, WHO grade 4", *(f"Astrocytoma {i}" for i in range(classes - 1))]
    image = _decode(confusion_png(np.eye(classes, dtype=int), names, "GP-UNet"))
    assert _edges_are_white(image)


def test_class_names_cut_alike_stay_whole():
    from gpmodels.report_figures import tick_names

    assert tick_names(["Glioblastoma multiforme, IDH-wildtype", "LGG"]) == ["Glioblastoma multiforme…", "LGG"]
    alike = ["Glioblastoma multiforme, left hemisphere", "Glioblastoma multiforme, right hemisphere"]
    assert tick_names(alike) == alike


def test_user_text_with_dollar_signs_is_drawn_as_text():
    """Class names come from a manifest's labels and titles from dataset names: a ``$`` pair in them is
    text, not maths (an invalid one made matplotlib raise)."""
    odd = "a$\\b$"
    assert _decode(confusion_png(np.eye(2, dtype=int), ["tumour-free", odd], f"study {odd}")).size
    assert _decode(dice_histogram_png(np.array([0.5]), f"study {odd}")).size
    epochs = np.arange(3.0)
    curves = {"fold 0": {"val_loss": (epochs, epochs + 1), "val_f1": (epochs, epochs / 3)}}
    assert _decode(training_curves_png(curves, f"grade {odd}")).size


def _slice_store(path, positions, patients, volumes=None):
    """A slice store of ``len(positions)`` 9 x 9 slices with the schema's ``patient`` and ``slice_index``."""
    n = len(positions)
    rng = np.random.default_rng(2)
    group = zarr.open_group(str(path), mode="w")
    group.create_array("images", data=rng.normal(size=(n, 1, 9, 9)).astype(np.float16))
    masks = np.zeros((n, 9, 9), np.uint8)
    masks[:, 2:6, 3:7] = 1
    group.create_array("masks", data=masks)
    group.create_array("patient", shape=(n,), dtype=str)[:] = np.asarray(patients, dtype=object)
    group.create_array("slice_index", data=np.asarray(positions, dtype=np.int16))
    if volumes is not None:
        group.attrs["volumes"] = volumes
    return group


def _heatmap_store(path, index):
    """A heatmap store over the store rows ``index`` (all class 1, tumour-free first) with post-hoc maps of them."""
    n = len(index)
    maps = np.zeros((n, 2, 9, 9), np.float16)
    maps[:, 1, 2:6, 3:7] = np.linspace(1, 2, n)[:, None, None]
    group = zarr.open_group(str(path), mode="w")
    group.create_array("maps", data=maps)
    for name in ("predicted", "labels"):
        group.create_array(name, data=np.ones(n, np.int8))
    group.create_array("index", data=np.asarray(index, np.int64))
    group.create_array("posthoc/rows", data=np.arange(n, dtype=np.int64))
    group.create_array("posthoc/gp", data=maps[:, 1])
    group.attrs.update({"classes": ["tumour-free", "LGG"], "model": "gp-unet", "fold": 0})
    return group


def _titles(monkeypatch, heatmaps, store) -> tuple[list[str], str]:
    """The titles of the example rows and of the post-hoc figure of a run, captured before drawing."""
    titles = []
    monkeypatch.setattr(report_figures, "example_png", lambda *args: titles.append(args[4]) or b"")
    monkeypatch.setattr(report_figures, "posthoc_png", lambda images, maps, title: title)
    index = heatmaps["index"][:]
    slices = {"index": index, "label": np.ones(index.size, np.int64), "dice": np.linspace(0.2, 0.8, index.size),
              "target_pixels": np.full(index.size, 16), "pred_pixels": np.full(index.size, 16),
              "patient": store["patient"][:][index]}
    report_figures.example_figures(heatmaps, store, slices, ThresholdConfig(method="fixed", value=0.5), 0)
    return titles, report_figures.posthoc_figure(heatmaps, store, 0)


def test_titles_name_the_axial_slice_not_the_store_row(tmp_path, monkeypatch):
    """Store row 5 is axial slice 37 of its patient: the titles give both, and ITK-SNAP's number (from 1)."""
    store = _slice_store(tmp_path / "s.zarr", [10, 11, 12, 36, 60, 37, 38], ["A"] * 3 + ["B"] * 4)
    heatmaps = _heatmap_store(tmp_path / "h.zarr", [3, 5, 6])
    examples, posthoc = _titles(monkeypatch, heatmaps, store)
    # median Dice: heatmap row 1 = store row 5; failure: heatmap row 0 = store row 3
    assert "; axial slice z=37 of B (ITK-SNAP 38; store row 5); " in examples[0]
    assert "; axial slice z=36 of B (ITK-SNAP 37; store row 3); " in examples[1]
    assert all("slice 5 (" not in title for title in examples)
    assert posthoc.endswith(": axial slice z=36 of B (ITK-SNAP 37; store row 3); axial slice z=37 of B "
                            "(ITK-SNAP 38; store row 5); axial slice z=38 of B (ITK-SNAP 39; store row 6)")
    monkeypatch.setattr(report_figures, "posthoc_png", lambda images, maps, title: title)
    labelled = report_figures.posthoc_figure(heatmaps, store, 0, label="GP-UNet (width=16)")
    assert labelled.startswith("GP-UNet (width=16) fold ")  # as the report's tables name the run, not its id


def test_titles_of_2d_sources_and_reoriented_volumes(tmp_path, monkeypatch):
    flat = _slice_store(tmp_path / "jc.zarr", [-1] * 4, ["100360", "100360", "98", "98"])
    examples, posthoc = _titles(monkeypatch, _heatmap_store(tmp_path / "h.zarr", [2, 3]), flat)
    assert "; image of 98 (store row 2); " in examples[0]
    assert posthoc.endswith(": image of 98 (store row 2); image of 98 (store row 3)")
    # a volume stored sagittally was sliced along its file's second voxel axis: ITK-SNAP shows y
    assert report_figures.slice_label("P", 37, 637, axis=1) == "axial slice y=37 of P (ITK-SNAP 38; store row 637)"
    turned = _slice_store(tmp_path / "t.zarr", [4, 5], ["P", "Q"], volumes={"P": {"axes": [0, 2, 1]}, "Q": {}})
    assert report_figures.slice_labels(turned, np.array([1, 0])) == [
        "axial slice z=5 of Q (ITK-SNAP 6; store row 1)", "axial slice y=4 of P (ITK-SNAP 5; store row 0)"]
    assert report_figures.slice_labels(turned, np.array([], np.int64)) == []


def test_a_long_title_wraps_inside_the_figure():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(33, 34))
    title = "; ".join(f"axial slice z={z} of BraTS20_Training_016 (ITK-SNAP {z + 1}; store row {600 + z})"
                      for z in range(37, 40))
    assert len(wrap_title(title, 500)) > 1 and wrap_title("", 500) == [""]
    short = _decode(posthoc_png(image[None], {"gp": image[None]}, "t"))
    wrapped = _decode(posthoc_png(image[None], {"gp": image[None]}, title))
    assert wrapped.shape[1] == short.shape[1] and wrapped.shape[0] > short.shape[0]
    assert _edges_are_white(wrapped)


def test_an_example_whose_multiotsu_is_undefined_says_so_not_a_threshold(tmp_path, monkeypatch):
    """A map of two values (a constant Grad-CAM grid, say) has no 3-class multi-Otsu: its mask is empty by rule,
    but the panel read "suppressed, threshold 2", as if a threshold had been found."""
    store = _slice_store(tmp_path / "s.zarr", [10, 11, 12], ["A"] * 3)
    heatmaps = _heatmap_store(tmp_path / "h.zarr", [0, 1, 2])  # each map: zeros and one value
    drawn = []
    monkeypatch.setattr(report_figures, "example_png", lambda *args: drawn.append(args[5:]) or b"")
    index = heatmaps["index"][:]
    slices = {"index": index, "label": np.ones(index.size, np.int64), "dice": np.zeros(index.size),
              "target_pixels": np.full(index.size, 16), "pred_pixels": np.zeros(index.size, np.int64),
              "patient": store["patient"][:][index]}
    report_figures.example_figures(heatmaps, store, slices, ThresholdConfig(), 0)
    assert drawn and all(undefined for _, undefined in drawn)
    drawn.clear()
    report_figures.example_figures(heatmaps, store, slices, ThresholdConfig(method="fixed", value=0.5), 0)
    assert drawn and not any(undefined for _, undefined in drawn)
    graded = np.zeros((index.size, 2, 9, 9), np.float16)
    graded[:, 1] = np.arange(81, dtype=np.float16).reshape(9, 9) / 81  # many values: multi-Otsu is defined
    heatmaps["maps"][:] = graded
    drawn.clear()
    report_figures.example_figures(heatmaps, store, slices, ThresholdConfig(), 0)
    assert drawn and not any(undefined for _, undefined in drawn)
    monkeypatch.undo()
    titles = []
    real = report_figures.map_panel
    monkeypatch.setattr(report_figures, "map_panel", lambda values, title, **kw: titles.append(title) or real(
        values, title, **kw))
    for undefined in (True, False):
        example_png(np.zeros((4, 4)), np.ones((4, 4)), np.zeros((4, 4), bool), np.zeros((4, 4), bool), "t", 1.0,
                    undefined)
    assert titles[1::2] == ["suppressed; multi-Otsu undefined: empty mask", "suppressed, threshold 1"]


def test_dice_histograms_side_by_side_share_their_count_axis():
    """Each histogram had its own count axis, so equal-looking bars of two models meant different counts."""
    few, many = np.full(5, 0.5), np.full(60, 0.5)
    assert report_figures.histogram_peak(few) == 5 and report_figures.histogram_peak(np.r_[many, np.nan]) == 60
    shared = _decode(report_figures.dice_histogram_png(few, "a", count_limit=60))
    own = _decode(report_figures.dice_histogram_png(few, "a"))
    assert shared.shape == own.shape and not np.array_equal(shared, own)
    assert np.array_equal(_decode(report_figures.dice_histogram_png(many, "a", count_limit=5)),
                          _decode(report_figures.dice_histogram_png(many, "a")))  # a smaller limit is no cut


def test_confusion_shading_is_each_rows_share():
    """A rare class's well-classified row was shaded paler than a common class's: the shading was the raw count."""
    scaled = _decode(report_figures.confusion_png(np.array([[90, 10], [90, 10]]), ["a", "b"], "t"))
    rare = _decode(report_figures.confusion_png(np.array([[90, 10], [9, 1]]), ["a", "b"], "t"))
    assert scaled.shape == rare.shape
    # the rows' shares are equal in both, so only the count text of the second row differs: a band of text height,
    # not the whole cells (about 56 px high)
    rows = np.flatnonzero((np.abs(scaled.astype(int) - rare) > 24).any(axis=(1, 2)))  # not palette rounding
    assert rows.size and rows.max() - rows.min() < 20
