"""Model inspection: parameter counts and a ReLU audit for guided backpropagation.

Guided backpropagation (Springenberg et al., 2015) as implemented by captum replaces the backward
pass of every ``nn.ReLU`` *module* through hooks. It silently degrades to plain gradients where a
network rectifies with ``F.relu``/``torch.relu`` (no module to hook), and it breaks or mis-assigns
gradients where a ReLU works in place or one module is called at several places of the forward pass.
:func:`relu_audit` finds all three.

References:
    Springenberg, J. T. et al., "Striving for simplicity: the all convolutional net", ICLR 2015
    workshop. Kokhlikyan, N. et al., "Captum: a unified and generic model interpretability library
    for PyTorch", arXiv 2009.07896 (2020).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

_FUNCTIONAL_RELUS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_})


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (shared parameters counted once).

    Args:
        model: Any module.
        trainable_only: Count only parameters with ``requires_grad``.

    Returns:
        The parameter count.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class _FunctionalReluCounter(TorchFunctionMode):
    """Counts ReLU calls made outside any ``nn.ReLU`` module's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.inside_relu_module = 0
        self.calls = 0

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Collection[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in _FUNCTIONAL_RELUS and self.inside_relu_module == 0:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def relu_audit(model: nn.Module, example_input: Tensor | None = None) -> list[str]:
    """List what would stop guided backpropagation from rectifying every ReLU of ``model``.

    Static checks (always): ``nn.ReLU`` modules with ``inplace=True``; one ``nn.ReLU`` instance
    registered under several names. Dynamic checks (when ``example_input`` is given, one forward
    pass without gradients, in the model's current train/eval mode): ``nn.ReLU`` modules called more
    than once; ReLUs applied functionally (``F.relu``, ``torch.relu``, ``Tensor.relu`` and their
    in-place forms) outside a ReLU module.

    Args:
        model: Module to inspect.
        example_input: Optional input batch (B, C, H, W) for the dynamic checks.

    Returns:
        One human-readable line per problem; an empty list when the model is fit for guided
        backpropagation.
    """
    problems: list[str] = []
    names_by_module: dict[int, list[str]] = defaultdict(list)
    relus: dict[int, nn.ReLU] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.ReLU):
            names_by_module[id(module)].append(name)
            relus[id(module)] = module
    for key, names in names_by_module.items():
        if relus[key].inplace:
            problems.append(f"{names[0]}: nn.ReLU with inplace=True")
        if len(names) > 1:
            problems.append(
                f"{', '.join(names)}: one nn.ReLU instance registered at several places"
            )
    if example_input is not None:
        problems.extend(_dynamic_relu_problems(model, example_input, relus, names_by_module))
    return problems


def _dynamic_relu_problems(
    model: nn.Module,
    example_input: Tensor,
    relus: dict[int, nn.ReLU],
    names_by_module: dict[int, list[str]],
) -> list[str]:
    """Run one forward pass and report reused ReLU modules and functional ReLU calls."""
    counter = _FunctionalReluCounter()
    calls: Counter[int] = Counter()

    def enter(module: nn.Module, args: Any) -> None:
        calls[id(module)] += 1
        counter.inside_relu_module += 1

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        counter.inside_relu_module -= 1

    handles = []
    for module in relus.values():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        with torch.no_grad(), counter:
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    problems = [
        f"{names_by_module[key][0]}: nn.ReLU module called {count} times in one forward pass"
        for key, count in calls.items()
        if count > 1
    ]
    if counter.calls:
        problems.append(f"{counter.calls} functional ReLU call(s) outside nn.ReLU modules")
    return problems
