"""Readable task-run names: ``train brats gp-unet fold 0`` instead of Prefect's ``train_model-a28``."""

from __future__ import annotations

from typing import TypeVar

from prefect import Task

T = TypeVar("T", bound=Task)


def named(task: T, *words: object) -> T:
    """The task, its runs named by ``words`` joined by spaces (``None`` and ``""`` left out).

    Given at the call site, not in the decorator: the source of a cached task (its decorator included) is part of
    its cache key, so a name there would make finished trainings run again. Braces are escaped: Prefect formats
    the name with the task's parameters.
    """
    title = " ".join(str(word) for word in words if word not in (None, ""))
    return task.with_options(task_run_name=title.replace("{", "{{").replace("}", "}}"))
