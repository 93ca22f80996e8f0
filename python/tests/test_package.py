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


def test_watch_is_imported_lazily_when_present():
    if importlib.util.find_spec("trainguard.watch") is None:
        with pytest.raises(AttributeError):
            trainguard.watch  # noqa: B018
    else:
        assert trainguard.watch.__name__ == "trainguard.watch"
    with pytest.raises(AttributeError, match="no attribute 'not_a_part'"):
        trainguard.not_a_part  # noqa: B018
