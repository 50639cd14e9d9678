"""Device choice at run time: CUDA (with mixed precision) when present, else CPU."""
from __future__ import annotations

import contextlib

import torch


def pick(name: str = "auto") -> torch.device:
    """The device `--device NAME` names: auto, cpu, cuda or cuda:N; anything else is a BenchError saying so."""
    from .errors import BenchError
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {name!r} is not a device bdbench runs on; use auto (CUDA if present, else the "
                         f"CPU), cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(f"--device {name} was asked for, but torch sees no CUDA device; use --device auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BenchError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0; use --device cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
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
