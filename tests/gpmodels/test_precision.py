"""Tests of gpmodels.precision: the precision a run trains in, channels-last memory, bf16 on the CPU."""

from __future__ import annotations

import pytest

from gpmodels import precision
from gpmodels.precision import resolve_precision


def test_precision_is_fp32_on_cpu():
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert resolve_precision("16-mixed", "cpu") == "bf16-mixed"  # what Lightning trains in: it has no fp16 on the CPU


@pytest.mark.parametrize(("native", "asked", "emulated"), [
    (False, "bf16-mixed", True), (True, "bf16-mixed", False), (None, "bf16-mixed", False), (False, "auto", False)])
def test_emulated_bf16_on_the_cpu_is_recognised(native, asked, emulated, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_is_native", lambda: native)
    assert precision.bf16_is_emulated(resolve_precision(asked, "cpu"), "cpu") is emulated


@pytest.mark.parametrize("native, resolved, expected", [
    (True, "bf16-mixed", True), (True, "32-true", False), (False, "bf16-mixed", False), (None, "bf16-true", False)])
def test_channels_last_on_the_cpu_only_for_native_bf16(native, resolved, expected, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_is_native", lambda: native)
    assert precision.use_channels_last("cpu", resolved) is expected
