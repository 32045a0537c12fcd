"""Choosing the torch device and the autocast precision ("auto" uses a GPU when there is one)."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto" | "cpu" | "cuda" | "cuda:N"`` into a :class:`torch.device`.

    ``"auto"`` picks CUDA when available, else the CPU. Asking for CUDA on a machine without
    it raises a ``ValueError`` that says so.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}: no CUDA GPU is available on this machine; use --device cpu or auto."
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"Unknown device {device!r}: use 'auto', 'cpu' or 'cuda'.")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 (or fp16) autocast on CUDA; a no-op context on the CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
