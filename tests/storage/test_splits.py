import itertools

import numpy as np
import pytest

from storage.ingest_config import SplitConfig
from storage.splits import (TEST, TRAIN, VAL, cvind_splits, extend_splits, grouped_splits, hashed_codes,
                            slice_splits)


def _dataset(n_patients=40, seed=0):
    """Slices of patients with variable counts; class 1 or 2 per patient, tumour-free slices too."""
    rng = np.random.default_rng(seed)
    patients, labels = [], []
    for p in range(n_patients):
        cls = 1 + p % 2
        n = int(rng.integers(20, 60))
        tumour = rng.random(n) < 0.5
        patients += [f"P{p:03d}"] * n
        labels += np.where(tumour, cls, 0).tolist()
    return np.array(patients), np.array(labels, dtype=np.int8)


def test_grouped_no_leak_ratios_and_classes():
    patients, labels = _dataset()
    splits = grouped_splits(patients, labels, SplitConfig(folds=3, seed=1))
    tests = []
    for fold, codes in splits.items():
        for p in np.unique(patients):
            assert np.unique(codes[patients == p]).size == 1, f"patient {p} leaks in fold {fold}"
        frac = np.bincount(codes, minlength=3) / codes.size
        assert np.allclose(frac, [0.60, 0.15, 0.25], atol=0.04), frac
        for split in (TRAIN, VAL, TEST):
            assert set(np.unique(labels[codes == split])) == {0, 1, 2}
        tests.append(set(np.unique(patients[codes == TEST])))
    assert all(not (a & b) for a, b in itertools.combinations(tests, 2))  # disjoint test sets across folds


def test_grouped_is_deterministic_and_seed_dependent():
    patients, labels = _dataset()
    a = grouped_splits(patients, labels, SplitConfig(seed=3))
    b = grouped_splits(patients, labels, SplitConfig(seed=3))
    c = grouped_splits(patients, labels, SplitConfig(seed=4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_slice_mode_single_test_set_stratified():
    patients, labels = _dataset()
    splits = slice_splits(labels, SplitConfig(mode="slice", folds=3, seed=0))
    test_sets = [set(np.flatnonzero(c == TEST)) for c in splits.values()]
    assert test_sets[0] == test_sets[1] == test_sets[2]
    codes = splits[0]
    assert abs((codes == TEST).mean() - 0.25) < 0.01 and abs((codes == VAL).mean() - 0.15) < 0.01
    for cls in (0, 1, 2):
        assert abs((codes[labels == cls] == TEST).mean() - 0.25) < 0.02
    assert not np.array_equal(splits[0], splits[1])  # different train/val shuffles


def test_slices_appended_to_a_slice_mode_store_share_its_one_test_set():
    """An appended slice was tested in one fold and trained on in the others."""
    patients, labels = _dataset()
    config = SplitConfig(mode="slice", folds=3, seed=0)
    base = slice_splits(labels, config)
    new_p = np.array([f"N{i}" for i in range(400)])
    grown = extend_splits(base, new_p, np.arange(400, dtype=np.int16), None, config)
    added = {fold: codes[labels.size:] for fold, codes in grown.items()}
    assert all(np.array_equal(added[0] == TEST, added[fold] == TEST) for fold in added)
    assert abs((added[0] == TEST).mean() - 0.25) < 0.06 and abs((added[0] == VAL).mean() - 0.15) < 0.05
    assert not np.array_equal(added[0], added[1])  # other validation slices


def test_cvind_mode():
    cvind = np.repeat(np.arange(1, 6), 4)
    splits = cvind_splits(cvind, SplitConfig(mode="cvind", folds=5))
    assert (splits[0][cvind == 1] == TEST).all() and (splits[0][cvind == 2] == VAL).all()
    assert (splits[4][cvind == 5] == TEST).all() and (splits[4][cvind == 1] == VAL).all()
    for fold in range(5):  # fold k tests on official fold k+1 and validates on the next, 5 wrapping to 1
        expected = np.where(cvind == fold + 1, TEST, np.where(cvind == (fold + 1) % 5 + 1, VAL, TRAIN))
        assert (splits[fold] == VAL).any() and np.array_equal(splits[fold], expected)
    with pytest.raises(ValueError, match="official fold 1-5, found 0 to 0"):
        cvind_splits(np.zeros(3, int), SplitConfig(mode="cvind"))
    with pytest.raises(ValueError, match="found 1 to 6"):
        cvind_splits(np.array([1, 6]), SplitConfig(mode="cvind"))


def test_extend_keeps_existing_and_is_order_independent():
    patients, labels = _dataset(20)
    config = SplitConfig(seed=2)
    base = grouped_splits(patients, labels, config)
    new_p = np.array(["N1", "N1", "N2", "N3"])
    idx = np.zeros(4, np.int16)
    ext = extend_splits(base, new_p, idx, None, config)
    for k in base:
        assert np.array_equal(ext[k][: patients.size], base[k])
        assert ext[k][patients.size] == ext[k][patients.size + 1]  # one patient, one split
    alone = extend_splits({k: np.zeros(0, np.int8) for k in base}, new_p[2:3], idx[:1], None, config)
    assert all(alone[k][0] == ext[k][patients.size + 2] for k in base)


def test_new_slices_of_stored_patients_take_their_codes_and_new_patients_are_hashed():
    config = SplitConfig(folds=3, seed=2)
    new_p = np.array(["A", "B", "C", "E", "B"])  # A and C sort before the last stored id D
    hashed = hashed_codes(["A", "C", "E"], config)
    stored = np.array(["D", "B", "B"])
    existing = {}
    for fold in range(3):  # D's slice coded unlike C, B's first slice unlike A and D (a wrong patient's would show)
        d = (hashed[fold][1] + 1) % 3
        existing[fold] = np.array([d, next(c for c in (0, 1, 2) if c not in (hashed[fold][0], d)), TRAIN], np.int8)
    grown = extend_splits(existing, new_p, np.zeros(5, np.int16), None, config, stored_patients=stored)
    for fold in range(3):
        assert np.array_equal(grown[fold][:3], existing[fold])
        assert np.array_equal(grown[fold][3:][[0, 2, 3]], hashed[fold])
        assert grown[fold][4] == grown[fold][7] == existing[fold][1]


def test_split_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ratios"):
        SplitConfig(ratios=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="split mode"):
        SplitConfig(mode="random")
    for seed in (-1, 2**32):  # numpy's "expected non-negative integer", which named no option
        with pytest.raises(ValueError, match=f"seed: got {seed}, expected 0 to 4294967295"):
            SplitConfig(seed=seed)


@pytest.mark.parametrize(("mode", "folds", "most"), [("grouped", 0, 4), ("grouped", 21, 4), ("slice", 0, 20),
                                                     ("slice", 21, 20), ("cvind", 6, 5)])
def test_a_fold_count_out_of_range_names_the_most_of_its_split_mode(mode, folds, most):
    """`--folds 0` said "expected 1-5 for cvind and 1-20 otherwise", though a grouped split takes at most 4."""
    with pytest.raises(ValueError, match=f"^folds: got {folds}, expected 1 to {most} with split mode {mode}$"):
        SplitConfig(mode=mode, folds=folds)


def test_grouped_splits_refuse_more_folds_than_disjoint_test_sets():
    assert SplitConfig(folds=4).test_blocks == 4 and SplitConfig(folds=10, ratios=(0.8, 0.1, 0.1)).test_blocks == 10
    with pytest.raises(ValueError, match=r"folds: got 5, but a grouped split testing on 0\.25 of the patients has 4 "
                                         r"disjoint test sets; use at most 4 folds"):
        SplitConfig(folds=5).check_new_split()
    SplitConfig(mode="slice", folds=10).check_new_split()  # one shared test set there


@pytest.mark.parametrize("patients, expected", [(12, [3, 3, 3]), (14, [4, 4, 3]), (16, [4, 4, 4])])
def test_grouped_test_blocks_hold_equal_numbers_of_patients(patients, expected):
    """Each class's remainder went to the same blocks: 12 patients gave test folds of 2, 4 and 4 patients
    (18 %, 33 %, 33 % of the slices instead of 25 %), with fold 0 always the smallest."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        ids = np.repeat([f"p{i:02d}" for i in range(patients)], 10)
        labels = np.repeat(rng.permutation(np.arange(patients) % 2 + 1), 10)  # LGG and HGG, half each
        splits = grouped_splits(ids, labels, SplitConfig(folds=3, seed=seed))
        assert [len(set(ids[splits[fold] == TEST])) for fold in range(3)] == expected


def _coverage_gaps(codes: dict[int, np.ndarray], patients: np.ndarray, labels: np.ndarray) -> list[tuple]:
    """The (fold, split, class) cells without a slice, for classes carried by at least 3 patients (as
    `gpseg validate`'s split_coverage)."""
    carriers = {c: np.unique(patients[labels == c]).size for c in np.unique(labels).tolist()}
    return [(fold, split, c) for fold, fold_codes in codes.items() for split in (TRAIN, VAL, TEST)
            for c, n in carriers.items() if n >= 3 and not ((fold_codes == split) & (labels == c)).any()]


def _store(rows: dict[str, tuple[int, tuple[int, int, int]]]):
    """Stored slices of patients given as id -> (class, codes in folds 0, 1, 2): one tumour-free slice and one
    of the class each."""
    patients = np.repeat(list(rows), 2)
    labels = np.array([c for cls, _ in rows.values() for c in (0, cls)], np.int8)
    existing = {f: np.repeat([codes[f] for _, codes in rows.values()], 2).astype(np.int8) for f in range(3)}
    return patients, labels, existing


def _new_patient_not_hashed_to(codes: tuple[int, int, int], config: SplitConfig) -> str:
    for k in range(1000):
        hashed = hashed_codes([f"N{k}"], config)
        if tuple(int(hashed[f][0]) for f in range(3)) != codes:
            return f"N{k}"
    raise AssertionError("no such id")


def test_an_appended_patient_fills_the_split_its_class_would_miss():
    """A drop brought a third LGG patient, which made LGG required in every split (gpseg validate), but the hash
    put it in a test set: every later retrain failed validation, for good. It now takes the blocks that fill
    the gap; patients of classes without gaps keep their hashed splits."""
    config = SplitConfig(folds=3, seed=0)
    others = {f"H{k}": (2, codes) for k, codes in enumerate(
        [(TRAIN, VAL, TEST), (VAL, TEST, TRAIN), (TEST, TRAIN, VAL), (TRAIN, TRAIN, TRAIN)])}
    stored = {"L1": (1, (TRAIN, VAL, TEST)), "L2": (1, (VAL, TEST, TRAIN)), **others}
    patients, labels, existing = _store(stored)
    needed = (TEST, TRAIN, VAL)  # the one placement that gives LGG every split of every fold
    new_id = _new_patient_not_hashed_to(needed, config)
    hgg_id = "H9"
    new_p = np.array([new_id, new_id, hgg_id, hgg_id])
    new_labels = np.array([0, 1, 0, 2], np.int8)
    grown = extend_splits(existing, new_p, np.arange(4, dtype=np.int16), None, config, patients, None,
                          new_labels, labels)
    hashed = hashed_codes(new_p.tolist(), config)
    for f in range(3):
        assert np.array_equal(grown[f][:patients.size], existing[f])  # stored patients never move
        assert grown[f][patients.size] == grown[f][patients.size + 1] == needed[f]
        assert np.array_equal(grown[f][patients.size + 2:], hashed[f][2:])  # HGG had no gap: hashed
    all_p, all_l = np.concatenate([patients, new_p]), np.concatenate([labels, new_labels])
    assert _coverage_gaps(grown, all_p, all_l) == []
    assert _coverage_gaps(extend_splits(existing, new_p, np.arange(4, dtype=np.int16), None, config, patients),
                          all_p, all_l) != []  # without the labels: the hash alone, the gap stays


def test_a_gap_only_stored_patients_could_fill_stays_and_nothing_else_moves():
    config = SplitConfig(folds=3, seed=0)
    stored = {"L1": (1, (TRAIN, VAL, TEST)), "L2": (1, (TRAIN, VAL, TEST)), "H1": (2, (TRAIN, VAL, TEST)),
              "H2": (2, (VAL, TEST, TRAIN)), "H3": (2, (TEST, TRAIN, VAL))}
    patients, labels, existing = _store(stored)
    new_p = np.array(["N1", "N1"])
    grown = extend_splits(existing, new_p, np.zeros(2, np.int16), None, config, patients, None,
                          np.array([0, 1], np.int8), labels)
    assert all(np.array_equal(grown[f][:patients.size], existing[f]) for f in range(3))
    placed = tuple(int(grown[f][patients.size]) for f in range(3))
    gaps = _coverage_gaps(grown, np.concatenate([patients, new_p]), np.concatenate([labels, [0, 1]]))
    # LGG misses 6 cells of 9 without N1; one patient fills 3 of them at most, so 3 stay
    assert len(gaps) == 3 and all(c == 1 for _, _, c in gaps)
    assert all(placed[f] != (TRAIN, VAL, TEST)[f] for f in range(3))


def test_covered_appends_keep_the_hashed_placement():
    patients, labels = _dataset(20)
    config = SplitConfig(seed=2)
    base = grouped_splits(patients, labels, config)
    new_p = np.array(["N1", "N1", "N2", "N3"])
    new_l = np.array([0, 1, 2, 0], np.int8)
    with_labels = extend_splits(base, new_p, np.zeros(4, np.int16), None, config, patients, None, new_l, labels)
    hashed = extend_splits(base, new_p, np.zeros(4, np.int16), None, config, patients)
    assert all(np.array_equal(with_labels[k], hashed[k]) for k in base)


def test_two_new_patients_swap_where_neither_move_alone_fills_the_gap(monkeypatch):
    """Moving one patient at a time left fold 1 without a validation patient of class 2, which the three new
    patients could give it by two moving at once (found by a reviewer's random search)."""
    import storage.splits

    config = SplitConfig(folds=2, seed=94)
    stored_p, stored_l = np.array(["S0", "S0", "S1", "S1"]), np.array([0, 3, 0, 2], np.int8)
    existing = grouped_splits(stored_p, stored_l, config)
    new_p, new_l = np.array(["N0", "N0", "N1", "N1", "N2", "N2"]), np.array([0, 1, 0, 2, 0, 2], np.int8)
    all_p, all_l = np.concatenate([stored_p, new_p]), np.concatenate([stored_l, new_l])

    def grow():
        return extend_splits(existing, new_p, np.zeros(6, np.int16), None, config, stored_p, None, new_l, stored_l)

    monkeypatch.setattr(storage.splits, "PAIR_LIMIT", 0)
    assert _coverage_gaps(grow(), all_p, all_l) == [(1, VAL, 2)]  # one at a time: stuck
    monkeypatch.undo()
    grown = grow()
    assert _coverage_gaps(grown, all_p, all_l) == []
    for f in range(2):
        assert np.array_equal(grown[f][:4], existing[f])
        assert all(np.unique(grown[f][4:][new_p == p]).size == 1 for p in ("N0", "N1", "N2"))


@pytest.mark.parametrize("folds", [1, 4])
def test_gaps_are_filled_beside_new_slices_of_a_stored_patient(folds):
    """A Jun Cheng drop mixes new slice files of stored patients (they keep their splits) with new patients."""
    config = SplitConfig(folds=folds, seed=5)
    stored_p = np.array(["A", "B", "C", "D"])
    stored_l = np.array([0, 0, 1, 1], np.int8)
    existing = grouped_splits(stored_p, stored_l, config)
    new_p = np.array(["A", "E", "E", "F", "B"])  # A and B: stored patients' new slices
    new_l = np.array([0, 1, 1, 1, 0], np.int8)
    grown = extend_splits(existing, new_p, np.zeros(5, np.int16), None, config, stored_p, None, new_l, stored_l)
    all_p, all_l = np.concatenate([stored_p, new_p]), np.concatenate([stored_l, new_l])
    assert _coverage_gaps(grown, all_p, all_l) == []
    hashed = extend_splits(existing, new_p, np.zeros(5, np.int16), None, config, stored_p)
    assert _coverage_gaps(hashed, all_p, all_l) != []  # the hash alone leaves gaps here
    for f in range(folds):
        assert np.array_equal(grown[f][:4], existing[f])
        assert grown[f][4] == existing[f][0] and grown[f][8] == existing[f][1]  # A and B keep their codes
        assert grown[f][5] == grown[f][6]  # E: one split per fold
    for p in ("E", "F"):  # a new patient is tested in one fold at most
        assert sum(int((grown[f][4:][new_p == p] == TEST).any()) for f in range(folds)) <= 1
