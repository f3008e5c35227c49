"""Training several seeds per (model, fold): the jobs, and keeping the lowest validation loss."""

from __future__ import annotations

import pytest

from flows.layout import dataset_of
from flows.params import BenchmarkParams
from flows.pipeline import keep_best_seeds, training_jobs


def _result(seed: int, loss: float | None, fold: int = 0, failed: str | None = None) -> dict:
    run = {"run_dir": f"w/runs/brats/v1/gp-unet/fold_{fold}/seed_{seed}", "model": "gp-unet", "fold": fold}
    return {**run, "failed": failed} if failed else {**run, "seed": seed, "best_val_loss": loss}


def test_jobs_train_each_seed_into_its_own_directory():
    params = BenchmarkParams(workdir="w", models=["gp-unet", "resnext50"], folds=2, seeds=[3, 5])
    jobs = training_jobs(params, "brats", "s.zarr", "v1")
    assert len(jobs) == 2 * 2 * 2
    assert {(j["model"], j["fold"], j["overrides"]["seed"], j["out"].rsplit("/", 2)[-2:][1]) for j in jobs} == {
        (m, f, s, f"seed_{s}") for m in ("gp-unet", "resnext50") for f in (0, 1) for s in (3, 5)}
    assert all(dataset_of(j["out"]) == "brats" for j in jobs)
    single = training_jobs(BenchmarkParams(workdir="w", models=["gp-unet"], folds=1), "brats", "s.zarr", "v1")
    assert single[0]["out"].endswith("gp-unet/fold_0") and "seed" not in single[0]["overrides"]
    assert dataset_of(single[0]["out"]) == "brats"


def test_the_lowest_validation_loss_is_kept_per_model_and_fold():
    kept, notes = keep_best_seeds([_result(0, 0.9), _result(1, 0.3), _result(2, None, failed="boom"),
                                   _result(0, 0.2, fold=1), _result(1, 0.4, fold=1)])
    assert [(r["fold"], r["seed"]) for r in kept] == [(0, 1), (1, 0)]
    assert notes[0].startswith("brats gp-unet fold 0: kept seed 1, the lowest validation loss of 3 seed(s)")
    assert "seed 0: 0.900" in notes[0] and "failed: seed_2" in notes[0]
    assert kept[0]["selection"] == {"kept": "seed_1", "losses": {"seed_0": 0.9, "seed_1": 0.3}, "failed": ["seed_2"]}


def test_every_seed_failing_is_one_failure_and_missing_losses_fall_back_to_the_first():
    kept, _ = keep_best_seeds([_result(0, None, failed="a"), _result(1, None, failed="b")])
    assert kept[0]["failed"] == "every seed failed (seed_0: a; seed_1: b)"
    kept, notes = keep_best_seeds([_result(4, None), _result(7, None)])
    assert kept[0]["seed"] == 4 and "seed 7: –" in notes[0]


@pytest.mark.parametrize("seeds", [[], [1, 1], [-1]])
def test_bad_seed_lists_are_rejected(seeds):
    with pytest.raises(ValueError, match="seeds"):
        BenchmarkParams(seeds=seeds)


def test_seeds_and_a_seed_override_conflict():
    with pytest.raises(ValueError, match="seeds, train_overrides"):
        BenchmarkParams(seeds=[0, 1], train_overrides={"seed": 2})
