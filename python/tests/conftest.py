"""pytest fixtures (the helpers themselves are in support.py)."""

from support import torch_load_restored  # noqa: F401  (a fixture, used by name)
