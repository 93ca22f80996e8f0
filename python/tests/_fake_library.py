"""Stands in for a library such as transformers: it imported torch before any guard existed and
calls `torch.load` / `torch.serialization.load` through the module, unmodified."""

import torch
import torch.serialization


def from_pretrained(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def load_via_serialization(path):
    return torch.serialization.load(path, weights_only=False)
