"""Validating a slice store with great-expectations.

The store is summarised into small pandas tables (one row per slice, per array, per fold and patient,
per fold/split/class) and checked against an expectation suite. First the schema: every array with its
dtype, dimensions and length, every recorded chunk file, the folds the split attribute names, the
attributes. Then, only when it holds: labels within the classes, binary masks, tumour-free slices with
empty masks and tumour slices with non-empty ones, finite images in ``[0, 1]``, consistent lengths, split
codes 0-2, named patients with one slice per position, no patient in two splits of a fold (grouped and
cvind modes; the slice mode leaks by design) and every class in every split wherever the data allow it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from storage.classes import has_tumour_free_class
from storage.ingest_config import SPLIT_NAMES
from storage.quiet import quiet_logger
from storage.reads import read_rows
from storage.splits import TEST, TRAIN, VAL, empty_splits
from storage.store import (CHUNK_COUNTS, fold_names, missing_chunks, open_store, read_patients,
                           recorded_chunks)

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

BLOCK = 256


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_store`.

    Attributes:
        success: every expectation held.
        failures: one readable line per failed expectation.
        counts: fold -> split name -> class name -> slices.
        checked: number of expectations evaluated.
    """

    success: bool
    failures: list[str] = field(default_factory=list)
    counts: dict[int, dict[str, dict[str, int]]] = field(default_factory=dict)
    checked: int = 0


def slice_table(group, block: int = BLOCK, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """One row per slice: label, mask and image statistics (read in blocks).

    Columns: ``label``, ``mask_binary``, ``mask_sum``, ``image_finite``,
    ``image_min``, ``image_max``, ``channel_max`` (a tuple: each channel's maximum), ``patient``.

    Args:
        group: the store.
        block: slices read at a time.
        progress: called with ``(slices read, N)`` after each block (every image is read: minutes for
            a real BraTS store).
    """
    n = group["labels"].shape[0]
    stats: dict[str, list[np.ndarray]] = {k: [] for k in ("mask_binary", "mask_sum", "image_finite",
                                                          "image_min", "image_max", "channel_max")}
    for start in range(0, n, block):
        if progress is not None and start:
            progress(start, n)
        rows = np.arange(start, min(start + block, n))
        masks, images = read_rows(rows, group["masks"], group["images"])  # a chunk that cannot be decoded: one line
        images = images.astype(np.float32)
        flat_m = masks.reshape(masks.shape[0], -1)
        flat_i = images.reshape(images.shape[0], -1)
        binary = (flat_m <= 1) if flat_m.dtype == np.uint8 else np.isin(flat_m, (0, 1))  # uint8 has no -1
        stats["mask_binary"].append(binary.all(axis=1))
        stats["mask_sum"].append(flat_m.sum(axis=1, dtype=np.int64))
        finite = np.isfinite(flat_i)
        stats["image_finite"].append(finite.all(axis=1))
        if stats["image_finite"][-1].all():  # the usual case, without two masked copies (2.2 times as fast)
            stats["image_min"].append(flat_i.min(axis=1))
            highest = images.reshape(*images.shape[:2], -1).max(axis=2)  # (n, C)
        else:
            stats["image_min"].append(np.where(finite, flat_i, np.inf).min(axis=1))
            highest = np.where(finite, flat_i, -np.inf).reshape(*images.shape[:2], -1).max(axis=2)
        stats["channel_max"].append(highest)
        stats["image_max"].append(highest.max(axis=1))
    if progress is not None:
        progress(n, n)
    channel_max = stats.pop("channel_max")
    table = pd.DataFrame({k: np.concatenate(v) if v else np.zeros(0) for k, v in stats.items()})
    table["channel_max"] = list(map(tuple, np.concatenate(channel_max))) if channel_max else []
    table["label"] = read_rows(np.arange(n), group["labels"])[0].astype(int)
    table["patient"] = read_patients(group)
    return table


def _split_tables(group, table: pd.DataFrame, classes: list[str], mode: str
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    leak_rows, cover_rows, code_rows, counts = [], [], [], {}
    carriers = table.groupby("label")["patient"].nunique() if mode != "slice" else table["label"].value_counts()
    for fold in fold_names(group):
        codes = group[f"splits/fold_{fold}"][:].astype(int)
        code_rows.append(pd.DataFrame({"fold": fold, "code": codes}))
        frame = table.assign(code=codes)
        per_patient = frame.groupby("patient")["code"].nunique()
        leak_rows += [{"fold": fold, "patient": p, "splits": int(k)} for p, k in per_patient.items()]
        counts[fold] = {}
        for code, split in ((TRAIN, "train"), (VAL, "val"), (TEST, "test")):
            in_split = frame[frame["code"] == code]["label"].value_counts()
            counts[fold][split] = {c: int(in_split.get(i, 0)) for i, c in enumerate(classes)}
            for i, c in enumerate(classes):
                possible = int(carriers.get(i, 0)) >= len(SPLIT_NAMES)
                cover_rows.append({"fold": fold, "split": split, "class": c, "present": bool(in_split.get(i, 0) > 0),
                                   "required": possible})
    leak = pd.DataFrame(leak_rows, columns=["fold", "patient", "splits"])
    cover = pd.DataFrame(cover_rows, columns=["fold", "split", "class", "present", "required"])
    cover["missing"] = np.where(cover["present"] | ~cover["required"],
                                "", "fold " + cover["fold"].astype(str) + " " + cover["split"] + ": " + cover["class"])
    leak["leaked"] = np.where(leak["splits"] > 1, "fold " + leak["fold"].astype(str) + ": " + leak["patient"], "")
    code_table = pd.concat(code_rows) if code_rows else pd.DataFrame({"fold": [], "code": []})
    return leak, cover, code_table, counts


def _blank_channels(table: pd.DataFrame, channels: list[str]) -> pd.DataFrame:
    """The ``blank`` column: ``"PATIENT: CHANNEL"`` for each channel that is 0 (or below) on every slice of a
    patient, after one blank row (so that the table is never empty). Ingestion rejects constant source
    channels, so a blank one means the normalisation or the store went wrong."""
    rows = [""]
    if len(table):
        highest = pd.DataFrame(table["channel_max"].tolist(), index=table["patient"]).groupby(level=0).max()
        rows += [f"{patient}: {channels[c] if c < len(channels) else c}"
                 for patient, values in highest.iterrows() for c, value in enumerate(values) if not value > 0]
    return pd.DataFrame({"blank": rows})


def _split_sizes(codes: pd.DataFrame) -> pd.DataFrame:
    """The ``empty`` column: each fold's empty train or test split, named as ingestion warns of it
    (:func:`storage.splits.empty_splits`), after one blank row, so that the table is never empty."""
    splits = {int(fold): rows["code"].to_numpy() for fold, rows in codes.groupby("fold")}
    return pd.DataFrame({"empty": ["", *empty_splits(splits)]})


SCHEMA_ARRAYS: dict[str, tuple[str, int]] = {"images": ("float16", 4), "masks": ("uint8", 3), "labels": ("int8", 1),
                                              "patient": ("str", 1), "slice_index": ("int16", 1)}
"""The arrays every slice store holds: dtype and dimensions (the store schema, README "Slice stores");
``splits/fold_K`` are int8 ``(N,)``."""

SCHEMA_ATTRS = ("schema_version", "dataset", "classes", "channels", "normalisation", "split", "sources", "rejected")
"""The attributes every slice store holds."""


def schema_table(group) -> pd.DataFrame:
    """One row per required array and attribute: ``problem`` is ``""`` when it is as the schema says, else one
    line (missing, another dtype or dimension count, another length than ``labels``, fold arrays that are not
    folds 0 to ``split["folds"] - 1``, an attribute missing, fewer chunk files than ingestion recorded).

    The other suites read these arrays and attributes, and crashed (a traceback, ``KeyError`` or a length
    mismatch in pandas) on a store where one is missing or short; they run only when this table has no problem.
    """
    rows: list[dict[str, str]] = []
    lengths = {name: int(group[name].shape[0]) for name in ("labels", "images") if name in group}
    n = lengths.get("labels", lengths.get("images", 0))
    # chunk files per array as ingestion wrote them; none in a store from before the record: nothing to compare
    recorded = recorded_chunks(group)
    written = recorded.get("images")  # one chunk file per slice
    expected = dict(SCHEMA_ARRAYS)
    split = group.attrs.get("split")
    folds = split.get("folds") if isinstance(split, dict) else None
    present = fold_names(group)
    expected.update({f"splits/fold_{k}": ("int8", 1) for k in present})
    if isinstance(folds, int) and present != list(range(folds)):
        rows.append({"item": "splits", "problem": f"splits: folds {present}, the split attribute says {folds}"})
    for name, (dtype, ndim) in expected.items():
        problem = ""
        if name not in group:
            problem = f"{name}: missing"
        else:
            array = group[name]
            found = "str" if array.dtype.kind in "OUT" or "String" in str(array.dtype) else str(array.dtype)
            if found != dtype or array.ndim != ndim:
                problem = f"{name}: {found} {tuple(array.shape)}, expected {dtype} with {ndim} dimension(s)"
            elif int(array.shape[0]) != n:
                problem = f"{name}: {array.shape[0]} rows, the store has {n} slices"
            elif name == "images" and written not in (None, n):
                # one chunk file per slice: a zarr.json claiming more rows would be read for hours, as fill values
                problem = (f"images: {n:,} rows, but ingestion wrote {written:,} slices (its "
                           f"{CHUNK_COUNTS} attribute): a damaged zarr.json")
        rows.append({"item": name, "problem": problem})
    rows += [{"item": key, "problem": "" if key in group.attrs else f"attribute {key}: missing"}
             for key in SCHEMA_ATTRS]
    record = group.attrs.get(CHUNK_COUNTS)
    if record is not None and (not isinstance(record, dict) or len(recorded) < len(record)):
        rows.append({"item": CHUNK_COUNTS, "problem": f"attribute {CHUNK_COUNTS}: damaged, expected the chunk files "
                     "written per array (a JSON object of counts)"})
    # arrays the schema does not name (cvind): one gone entirely is missing (the rows above name their own)
    rows += [{"item": name, "problem": f"{name}: missing (ingestion wrote {count} chunk files of it)"}
             for name, count in recorded.items() if name not in group and name not in expected]
    rows += [{"item": f"{name} chunks", "problem": f"{name}: {lost} of the {recorded[name]} chunk files are missing "
              "(a damaged or partly copied store, which would read as zeros)"}
             for name, lost in missing_chunks(group, [n for n in recorded if n in group]).items() if lost]
    return pd.DataFrame(rows, columns=["item", "problem"])


def _describe(name: str, result) -> str:
    kwargs = {k: v for k, v in result.expectation_config.kwargs.items() if k != "batch_id"}
    info = result.result or {}
    sample = info.get("partial_unexpected_list") or info.get("observed_value")
    count = info.get("unexpected_count")
    what = f"{count} unexpected" if count is not None else "failed"
    return f"[{name}] {result.expectation_config.type}({kwargs}): {what}; e.g. {sample}"


def _run_suite(context, name: str, frame: pd.DataFrame, expectations: list) -> tuple[list[str], int]:
    asset = context.data_sources.add_pandas(name).add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(name).get_batch(batch_parameters={"dataframe": frame})
    failures = []
    for expectation in expectations:
        result = batch.validate(expectation)
        if not result.success:
            failures.append(_describe(name, result))
    return failures, len(expectations)


def validate_store(path: Path | str, progress: Callable[[int, int], None] | None = None) -> ValidationResult:
    """Check a slice store against the schema's expectations.

    Args:
        path: the store.
        progress: called with ``(slices read, N)`` while every slice is read.

    Returns:
        The result with one line per failed expectation and the class counts
        per fold and split.

    Raises:
        StoreError: the path is not a slice store of this schema.
    """
    # GE logs about 200 lines at INFO on import, and "Created temporary directory ... for ephemeral docs
    # site" for each context (from a logger that its import sets to INFO): not for a flow's log
    with quiet_logger("great_expectations"):
        import great_expectations  # noqa: F401
    with quiet_logger("great_expectations"):
        return _validate(path, progress)


def _validate(path: Path | str, progress: Callable[[int, int], None] | None) -> ValidationResult:
    """:func:`validate_store`'s work."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    E = gx.expectations
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    group = open_store(path)
    schema = schema_table(group)
    failures, checked = _run_suite(context, "schema", schema, [
        E.ExpectColumnValuesToBeInSet(column="problem", value_set=[""])])
    if failures:  # the other suites read what is missing or malformed: named in one line instead
        problems = "; ".join(p for p in schema["problem"] if p)
        return ValidationResult(False, [f"[schema] {problems}; the other expectations were not checked"], {}, checked)
    classes = list(group.attrs["classes"])
    mode = group.attrs.get("split", {}).get("mode", "grouped")
    n = group["labels"].shape[0]
    table = slice_table(group, progress=progress)
    tumour_free = has_tumour_free_class(classes)
    table["tumour_free"] = (table["label"] == 0) if tumour_free else False
    table["mask_matches_label"] = np.where(table["tumour_free"], table["mask_sum"] == 0, table["mask_sum"] > 0)
    table["patient_named"] = table["patient"].str.strip().str.len() > 0
    slice_index = group["slice_index"][:].astype(int)  # -1 for 2-D sources; else one slice per position
    table["slice_repeated"] = (slice_index >= 0) & pd.DataFrame(
        {"patient": table["patient"], "slice": slice_index}).duplicated(keep=False).to_numpy()
    image_shape = group["images"].shape
    arrays = pd.DataFrame({"array": ["images", "masks", "labels", "patient", "slice_index"],
                           "length": [image_shape[0], group["masks"].shape[0], n,
                                      group["patient"].shape[0], group["slice_index"].shape[0]],
                           "plane": [tuple(image_shape[2:]), tuple(group["masks"].shape[1:]), None, None, None]})
    arrays["plane_ok"] = arrays["plane"].map(lambda p: p is None or p == tuple(image_shape[2:]))
    leak, cover, codes, counts = _split_tables(group, table, classes, mode)
    suites = [
        ("slices", table, [
            E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(len(classes)))),
            E.ExpectColumnValuesToBeInSet(column="mask_binary", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="mask_matches_label", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="image_finite", value_set=[True]),
            E.ExpectColumnValuesToBeBetween(column="image_min", min_value=0.0, max_value=1.0),
            E.ExpectColumnValuesToBeBetween(column="image_max", min_value=0.0, max_value=1.0),
            E.ExpectColumnValuesToNotBeNull(column="patient"),
            E.ExpectColumnValuesToBeInSet(column="patient_named", value_set=[True]),
            # export-masks puts each mask back at its (patient, slice_index): two at one place would overwrite
            E.ExpectColumnValuesToBeInSet(column="slice_repeated", value_set=[False]),
        ]),
        ("arrays", arrays, [
            E.ExpectColumnValuesToBeInSet(column="length", value_set=[n]),
            E.ExpectColumnValuesToBeInSet(column="plane_ok", value_set=[True]),
        ]),
        ("channels", _blank_channels(table, list(group.attrs.get("channels") or [])), [
            E.ExpectColumnValuesToBeInSet(column="blank", value_set=[""]),
        ]),
        ("split_codes", codes, [
            E.ExpectColumnValuesToBeInSet(column="code", value_set=[TRAIN, VAL, TEST]),
            E.ExpectTableRowCountToEqual(value=n * len(counts)),
        ]),
        ("split_coverage", cover, [E.ExpectColumnValuesToBeInSet(column="missing", value_set=[""])]),
        ("split_sizes", _split_sizes(codes), [E.ExpectColumnValuesToBeInSet(column="empty", value_set=[""])]),
    ]
    if mode != "slice":
        suites.append(("patient_leakage", leak, [E.ExpectColumnValuesToBeInSet(column="leaked", value_set=[""])]))
    if not counts:
        failures.append("[splits] no splits/fold_K arrays in the store")
    for name, frame, expectations in suites:
        found, k = _run_suite(context, name, frame, expectations)
        failures += found
        checked += k
    return ValidationResult(not failures, failures, counts, checked)
