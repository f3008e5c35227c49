"""Train/val/test assignment per fold (codes 0 train, 1 val, 2 test).

Modes (README, "Splits"):

* ``grouped`` (default): patients are stratified by their tumour class and
  dealt, largest slice-deficit first, into ``round(1 / test)`` test blocks
  (4 for 25 %); fold ``k`` tests on block ``k``, so test sets of different
  folds are disjoint. The remaining patients are dealt the same way into
  ``round((train + val) / val)`` blocks (5 for 15:60) and fold ``k`` validates
  on block ``k``. No patient is in two splits of a fold. A class with fewer
  patients than blocks (but at least 3) uses fewer blocks, so it is still in
  every split; its ratios then drift from 60:15:25.
* ``slice``: the reference code's protocol. One class-stratified test set of
  25 % of the *slices*, then per fold a stratified 80:20 train/val shuffle of
  the rest. Slices of one patient land in train and test (optimistic scores).
* ``cvind``: Jun Cheng's official 5 folds; fold ``k`` tests on ``cvind == k+1``
  and validates on the next fold's slices.

Appending (new data drops): existing slices keep their codes; each new patient
(grouped) or slice (slice mode) gets blocks from a hash of the seed and its id,
so the assignment does not depend on what else arrived. In grouped mode one exception:
where that hash would leave a class of at least 3 patients out of a split of a fold
(``gpseg validate`` requires it there), the new patients of that class are moved to
blocks that fill the gaps (:func:`cover_appended`), as far as moving them can (the
stored patients never move).
"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit

from storage.ingest_config import SPLIT_NAMES, SplitConfig

TRAIN, VAL, TEST = 0, 1, 2
MIN_CARRIERS = len(SPLIT_NAMES)
"""A class with slices in at least this many patients (grouped) must be in every split of every fold
(:mod:`storage.validation`'s ``split_coverage``)."""
PAIR_LIMIT = 16
""":func:`cover_appended` tries moving two new patients at once among the first this many of a class with a gap
(``PAIR_LIMIT * (PAIR_LIMIT - 1) / 2`` pairs of up to 20 x 20 placements each)."""


def _blocks(config: SplitConfig) -> tuple[int, int]:
    """Number of test blocks and of val blocks implied by the ratios."""
    train, val, _ = config.ratios
    return config.test_blocks, max(2, round((train + val) / val))


def patient_classes(patients: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    """The class of each patient: the highest label among its slices.

    Args:
        patients: str ``(N,)`` patient ids.
        labels: int ``(N,)`` slice classes (0 is tumour-free where present).
    """
    out: dict[str, int] = {}
    for pid, label in zip(patients.tolist(), labels.tolist()):
        out[pid] = max(out.get(pid, label), label)
    return out


def deal(items: list[str], weights: dict[str, int], strata: dict[str, int], n_blocks: int,
         rng: np.random.Generator, min_members: int) -> dict[str, tuple[int, int]]:
    """Deal items into blocks, per stratum, each to the block with the least weight.

    Items of a stratum are shuffled, then the heaviest go first to the block
    with the fewest items of the stratum, then the fewest items of all strata
    so far, then the least weight, which balances the blocks' sizes (a
    stratum's remainder goes where earlier strata left fewer items) and total
    weight per block. A stratum with fewer items than blocks but at least ``min_members``
    uses only as many blocks as it has items, so that every fold's block holds
    one of its items (small datasets keep every class in every split).

    Returns:
        item -> (block index, number of blocks its stratum uses).
    """
    out: dict[str, tuple[int, int]] = {}
    dealt = np.zeros(n_blocks, dtype=int)  # items of every stratum so far, per block
    for stratum in sorted(set(strata[i] for i in items)):
        members = [i for i in items if strata[i] == stratum]
        members = [members[j] for j in rng.permutation(len(members))]
        members.sort(key=lambda i: -weights[i])
        blocks = min(n_blocks, len(members)) if len(members) >= min_members else n_blocks
        load = np.zeros(blocks)
        count = np.zeros(blocks, dtype=int)
        for item in members:
            # fewest of this stratum first, then fewest items overall (so that the strata's remainders go to
            # different blocks, not all to the same ones), then least weight of this stratum
            block = int(np.lexsort((load, dealt[:blocks], count))[0])
            out[item] = (block, blocks)
            load[block] += weights[item]
            count[block] += 1
            dealt[block] += 1
    return out


def grouped_splits(patients: np.ndarray, labels: np.ndarray, config: SplitConfig) -> dict[int, np.ndarray]:
    """Patient-grouped, class-stratified splits; see the module docstring.

    Args:
        patients: str ``(N,)`` patient id per slice.
        labels: int ``(N,)`` class per slice.
        config: folds, seed, ratios.

    Returns:
        fold -> int8 ``(N,)`` codes.
    """
    rng = np.random.default_rng(config.seed)
    strata = patient_classes(patients, labels)
    ids, counts = np.unique(patients, return_counts=True)
    weights = dict(zip(ids.tolist(), counts.tolist()))
    order = sorted(strata)
    n_test, n_val = _blocks(config)
    test_block = deal(order, weights, strata, n_test, rng, min_members=3)
    out: dict[int, np.ndarray] = {}
    for fold in range(config.folds):
        test_ids = {p for p in order if test_block[p][0] == fold % test_block[p][1]}
        rest = [p for p in order if p not in test_ids]
        val_block = deal(rest, weights, strata, n_val, np.random.default_rng([config.seed, fold]), min_members=2)
        code = {p: TEST for p in test_ids}
        code.update({p: VAL if val_block[p][0] == fold % val_block[p][1] else TRAIN for p in rest})
        out[fold] = np.array([code[p] for p in patients.tolist()], dtype=np.int8)
    return out


def _stratified_cut(index: np.ndarray, labels: np.ndarray, size: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Split ``index`` into (rest, part) with ``part`` a ``size`` fraction, stratified when possible."""
    y = labels[index]
    counts = np.unique(y, return_counts=True)[1]
    classes = counts.size
    if counts.min() >= 2 and min(size, 1 - size) * index.size >= classes:
        rest, part = next(StratifiedShuffleSplit(n_splits=1, test_size=size, random_state=seed).split(index, y))
    else:
        perm = np.random.default_rng(seed).permutation(index.size)
        cut = int(round(index.size * (1 - size)))
        rest, part = perm[:cut], perm[cut:]
    return index[rest], index[part]


def slice_splits(labels: np.ndarray, config: SplitConfig) -> dict[int, np.ndarray]:
    """The reference code's slice-level protocol (one test set, per-fold train/val shuffles).

    Args:
        labels: int ``(N,)`` class per slice.
        config: folds, seed, ratios.

    Returns:
        fold -> int8 ``(N,)`` codes.
    """
    train, val, test = config.ratios
    rest, test_idx = _stratified_cut(np.arange(labels.size), labels, test, config.seed)
    out: dict[int, np.ndarray] = {}
    for fold in range(config.folds):
        codes = np.full(labels.size, TRAIN, dtype=np.int8)
        codes[test_idx] = TEST
        codes[_stratified_cut(rest, labels, val / (train + val), config.seed + fold + 1)[1]] = VAL
        out[fold] = codes
    return out


def cvind_splits(cvind: np.ndarray, config: SplitConfig) -> dict[int, np.ndarray]:
    """Jun Cheng's official folds: fold k tests on ``cvind == k+1``, validates on the next.

    Args:
        cvind: int ``(N,)`` official fold (1-5) per slice.

    Raises:
        ValueError: any value outside 1-5 (e.g. slices ingested without ``cvind.mat``).
    """
    if cvind.size and (cvind.min() < 1 or cvind.max() > 5):
        raise ValueError(f"split mode cvind: every slice needs an official fold 1-5, found {int(cvind.min())} to "
                         f"{int(cvind.max())} (is cvind.mat in the source folder?)")
    out: dict[int, np.ndarray] = {}
    for fold in range(config.folds):
        codes = np.full(cvind.size, TRAIN, dtype=np.int8)
        codes[cvind == fold + 1] = TEST
        codes[cvind == (fold + 1) % 5 + 1] = VAL
        out[fold] = codes
    return out


def _unit_hash(*parts: object) -> float:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hashed_codes(keys: list[str], config: SplitConfig) -> dict[int, np.ndarray]:
    """Codes for appended items from a hash of (seed, key): stable whatever else arrives.

    In slice mode every fold shares one test set, as :func:`slice_splits` deals it; in grouped mode each
    fold tests another block.

    Args:
        keys: one key per new slice (its patient id in grouped mode, patient and
            slice index in slice mode).

    Returns:
        fold -> int8 ``(len(keys),)`` codes.
    """
    n_test, n_val = _blocks(config)
    test_block = np.array([int(_unit_hash(config.seed, "test", k) * n_test) for k in keys])
    val_block = np.array([int(_unit_hash(config.seed, "val", k) * n_val) for k in keys])
    out: dict[int, np.ndarray] = {}
    for fold in range(config.folds):
        # slice mode: the paper's one test set, shared by every fold (an appended slice tested in one fold
        # was trained on in the others); grouped mode: each fold tests another quarter
        tested = test_block == (0 if config.mode == "slice" else fold % n_test)
        codes = np.where(tested, TEST, np.where(val_block == fold % n_val, VAL, TRAIN))
        out[fold] = codes.astype(np.int8)
    return out


def make_splits(patients: np.ndarray, labels: np.ndarray, cvind: np.ndarray | None,
                config: SplitConfig) -> dict[int, np.ndarray]:
    """Splits for a whole store, in the configured mode (:func:`grouped_splits`, :func:`slice_splits` or
    :func:`cvind_splits`).

    Args:
        patients: ``(N,)`` str patient id per slice.
        labels: ``(N,)`` int class code per slice.
        cvind: ``(N,)`` int official fold (1-5) per slice, or ``None`` where the source has none.
        config: the split's mode, folds, seed and ratios.

    Returns:
        ``{fold: (N,) int8 codes}`` (``TRAIN``, ``VAL``, ``TEST``) for every fold.

    Raises:
        ValueError: ``cvind`` mode without official folds, or with a fold outside 1-5.
    """
    if config.mode == "grouped":
        return grouped_splits(patients, labels, config)
    if config.mode == "slice":
        return slice_splits(labels, config)
    if cvind is None:
        raise ValueError("split mode cvind needs the official folds (Jun Cheng's cvind.mat)")
    return cvind_splits(cvind, config)


def extend_splits(existing: dict[int, np.ndarray], patients: np.ndarray, slice_index: np.ndarray,
                  cvind: np.ndarray | None, config: SplitConfig, stored_patients: np.ndarray | None = None,
                  slice_keys: list[str] | None = None, labels: np.ndarray | None = None,
                  stored_labels: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """Codes for appended slices, concatenated after the existing ones.

    In grouped mode a new slice of a stored patient (a Jun Cheng slice file of a patient already in the
    store) takes that patient's codes, so the patient stays in one split of each fold; other new
    patients are placed by :func:`hashed_codes`, then, given the labels, moved where a class would miss a
    split (:func:`cover_appended`).

    Args:
        existing: fold -> codes ``(N,)`` of the slices already stored (kept unchanged).
        patients, slice_index, cvind: the new slices' ids, positions and official folds, ``(M,)`` each.
        stored_patients: ``(N,)`` patient id of each stored slice; ``None`` when none is stored.
        slice_keys: ``(M,)`` one key per new slice for slice mode, unique per slice (a 2-D slice's
            source file); default ``patient/slice_index``.
        labels, stored_labels: ``(M,)`` and ``(N,)`` class codes of the new and the stored slices (grouped
            mode; without both, the hash alone places the new patients).
    """
    if config.mode == "cvind":
        new = cvind_splits(cvind if cvind is not None else np.zeros(0, int), config)
    elif config.mode == "grouped":
        new = hashed_codes(patients.tolist(), config)
        if stored_patients is not None and len(stored_patients) and len(patients):
            new = _stored_patients_codes(new, existing, np.asarray(stored_patients, dtype=str),
                                         np.asarray(patients, dtype=str))
        if labels is not None and stored_labels is not None and stored_patients is not None and len(patients):
            new = cover_appended(new, existing, np.asarray(stored_patients, dtype=str), np.asarray(stored_labels),
                                 np.asarray(patients, dtype=str), np.asarray(labels), config)
    else:
        keys = slice_keys or [f"{p}/{s}" for p, s in zip(patients.tolist(), slice_index.tolist())]
        new = hashed_codes(keys, config)
    return {fold: np.concatenate([existing[fold], new[fold]]) for fold in existing}


def cover_appended(new: dict[int, np.ndarray], existing: dict[int, np.ndarray], stored_patients: np.ndarray,
                   stored_labels: np.ndarray, patients: np.ndarray, labels: np.ndarray, config: SplitConfig
                   ) -> dict[int, np.ndarray]:
    """``new`` with the new patients moved where the hash left a class out of a split of a fold.

    A class with slices in at least :data:`MIN_CARRIERS` patients (stored and new) must have slices in every
    split of every fold. Where it misses one, each new patient carrying such a class (in id order) moves to the
    test and validation blocks (as :func:`hashed_codes` numbers them) where it fills more empty (fold, split,
    class) cells of those classes than where it is; when no single move helps, two new patients move at once
    (a swap, among the first :data:`PAIR_LIMIT` of a class with a gap). This repeats until no move helps.
    Stored patients never move, so a gap can stay (``gpseg validate`` names it) until more patients of its
    class arrive. A store without gaps keeps the hashed placement.

    Args:
        new: fold -> codes ``(M,)`` of the new slices, as hashed (a stored patient's slices already carrying
            its stored codes: they are not moved).
        existing: fold -> codes ``(N,)`` of the stored slices.
        stored_patients, stored_labels: ``(N,)`` patient id and class code of each stored slice.
        patients, labels: ``(M,)`` the same for the new slices.
        config: the store's split settings (grouped mode).

    Returns:
        fold -> codes ``(M,)``.
    """
    folds = sorted(new)
    stored_ids = set(stored_patients.tolist())
    codes: dict[str, tuple[int, ...]] = {}
    carried: dict[str, set[int]] = {}
    for ids, classes, split in ((stored_patients, stored_labels, existing), (patients, labels, new)):
        for i, (pid, label) in enumerate(zip(ids.tolist(), classes.tolist())):
            if pid not in codes:
                codes[pid] = tuple(int(split[f][i]) for f in folds)
            carried.setdefault(pid, set()).add(int(label))
    carriers: dict[int, int] = {}
    for classes in carried.values():
        for label in classes:
            carriers[label] = carriers.get(label, 0) + 1
    required = {label for label, n in carriers.items() if n >= MIN_CARRIERS}
    count: dict[tuple[int, int, int], int] = {}
    for pid, placed in codes.items():
        for cell in _cells(placed, carried[pid] & required):
            count[cell] = count.get(cell, 0) + 1
    wanted = {(f, s, label) for f in range(len(folds)) for s in (TRAIN, VAL, TEST) for label in required}
    if wanted <= set(count):
        return new
    movable = sorted({p for p in patients.tolist() if p not in stored_ids and carried[p] & required})
    options = {pid: _placements(pid, folds, config) for pid in movable}
    hashed = {pid: codes[pid] for pid in movable}

    def move(group: tuple[str, ...]) -> bool:
        """Place ``group`` (one or two new patients) where it fills the most empty cells, if that is more than
        where it is; say whether it moved. Each move fills at least one more cell, so the loop below ends."""
        mine = {pid: carried[pid] & required for pid in group}
        for pid in group:
            for cell in _cells(codes[pid], mine[pid]):
                count[cell] -= 1

        def gain(placements: tuple[tuple[int, ...], ...]) -> int:
            return len({cell for pid, placed in zip(group, placements) for cell in _cells(placed, mine[pid])
                        if not count.get(cell, 0)})

        best = max(itertools.product(*(options[pid] for pid in group)), key=gain)
        moved = gain(best) > gain(tuple(codes[pid] for pid in group))
        if moved:
            codes.update(zip(group, best))
        for pid in group:
            for cell in _cells(codes[pid], mine[pid]):
                count[cell] = count.get(cell, 0) + 1
        return moved

    while not wanted <= {cell for cell, n in count.items() if n}:
        if any([move((pid,)) for pid in movable]):  # a list: every patient gets its move in this pass
            continue
        gaps = {cell[2] for cell in wanted if not count.get(cell, 0)}
        pairable = [pid for pid in movable if carried[pid] & gaps][:PAIR_LIMIT]
        if not any(move(pair) for pair in itertools.combinations(pairable, 2)):  # two at once: a swap
            break
    if all(codes[pid] == hashed[pid] for pid in movable):
        return new
    ids = patients.tolist()
    return {f: np.array([codes[p][k] if p not in stored_ids else new[f][i] for i, p in enumerate(ids)], np.int8)
            for k, f in enumerate(folds)}


def _placements(pid: str, folds: list[int], config: SplitConfig) -> list[tuple[int, ...]]:
    """A new patient's possible codes per fold (each pair of test and validation blocks, as :func:`hashed_codes`
    numbers them), without repeats, in an order drawn from a hash of the seed and its id."""
    n_test, n_val = _blocks(config)
    blocks = sorted(((t, v) for t in range(n_test) for v in range(n_val)),
                    key=lambda b: _unit_hash(config.seed, "cover", pid, *b))
    return list(dict.fromkeys(_block_codes(t, v, folds, n_test, n_val) for t, v in blocks))


def _cells(placed: tuple[int, ...], classes: set[int]) -> list[tuple[int, int, int]]:
    """The (fold position, split code, class) cells a patient with codes ``placed`` fills for ``classes``."""
    return [(k, code, label) for k, code in enumerate(placed) for label in classes]


def _block_codes(test_block: int, val_block: int, folds: list[int], n_test: int, n_val: int) -> tuple[int, ...]:
    """A patient's code in each fold for its test and validation blocks, as :func:`hashed_codes` gives them."""
    return tuple(TEST if test_block == f % n_test else VAL if val_block == f % n_val else TRAIN for f in folds)


def empty_splits(splits: dict[int, np.ndarray]) -> list[str]:
    """``"fold K train is empty"`` / ``"fold K test is empty"`` for each fold that cannot be trained or
    tested (a grouped split of too few patients per class deals them into the same first blocks).

    Args:
        splits: fold -> codes ``(N,)``.
    """
    return [f"fold {fold} {name} is empty" for fold, codes in sorted(splits.items())
            for code, name in ((TRAIN, "train"), (TEST, "test")) if not (codes == code).any()]


def _stored_patients_codes(new: dict[int, np.ndarray], existing: dict[int, np.ndarray], stored: np.ndarray,
                           patients: np.ndarray) -> dict[int, np.ndarray]:
    """``new`` with each slice of a stored patient given the codes of that patient's first stored slice.

    Args:
        new: fold -> codes ``(M,)`` of the new slices as hashed.
        existing: fold -> codes ``(N,)`` of the stored slices.
        stored: ``(N,)`` patient ids of the stored slices.
        patients: ``(M,)`` patient ids of the new slices.
    """
    names, first = np.unique(stored, return_index=True)
    position = np.searchsorted(names, patients)
    known = (position < names.size) & (names[np.minimum(position, names.size - 1)] == patients)
    if not known.any():
        return new
    rows = first[position[known]]
    out = {}
    for fold, codes in new.items():
        codes = codes.copy()
        codes[known] = existing[fold][rows]
        out[fold] = codes
    return out
