"""The package surface: one exception family, the public names, the optional `watch` part."""

from __future__ import annotations

import importlib.util

import pytest

import trainguard


def test_one_exception_family():
    for exc in (
        trainguard.UnsafeModelError,
        trainguard.PolicyError,
        trainguard.CheckpointError,
    ):
        assert issubclass(exc, trainguard.TrainguardError)
    assert issubclass(trainguard.TrainguardError, Exception)
    assert trainguard.UnsafeModelError.__module__ == "trainguard"


def test_public_names_exist_and_the_native_module_is_private():
    for name in trainguard.__all__:
        assert hasattr(trainguard, name), name
    assert not any(name.startswith("_") for name in trainguard.__all__)
    assert "scan_path" not in trainguard.__all__


def test_watch_is_the_function_and_its_errors_are_trainguard_errors():
    # `trainguard.watch(model, optimizer, ...)` is one line in a training loop: the function,
    # not the submodule of the same name.
    assert callable(trainguard.watch) and trainguard.watch.__name__ == "watch"
    assert issubclass(trainguard.WatchError, trainguard.TrainguardError)
    assert importlib.import_module("trainguard.watch").watch is trainguard.watch
    with pytest.raises(AttributeError, match="no attribute 'not_a_part'"):
        trainguard.not_a_part  # noqa: B018
