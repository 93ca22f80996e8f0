"""pytest fixtures (the helpers themselves are in support.py)."""

from support import one_torch_thread, torch_load_restored  # noqa: F401  (fixtures, used by name)
