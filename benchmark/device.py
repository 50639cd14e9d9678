"""Device choice at run time: CUDA (with mixed precision) when present, else CPU."""
from __future__ import annotations

import contextlib

import torch


def pick(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import BenchError
        raise BenchError("--device cuda was asked for, but torch sees no CUDA device; use --device auto or cpu")
    return dev


def autocast(device: torch.device):
    """Mixed precision on CUDA (bfloat16 where supported, else float16), a no-op on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device: torch.device):
    """A GradScaler is only needed for float16 autocast."""
    enabled = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda", enabled=enabled)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"
