"""Models: a timm network behind a [0,1]-input wrapper, safetensors I/O, fine-tuning protocols.

`Classifier` takes images in [0,1] (what attacks and defenses see), normalises them, and runs
any timm model. It carries a `feature_mask` over the channels of the last feature map (all ones
unless a pruning defense zeroes some), so a pruned model is still a plain state dict.
"""
from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from . import architectures  # noqa: F401  (registers networks timm does not ship, e.g. preact_resnet18)
from .errors import CheckpointError, DivergedError


class Classifier(nn.Module):
    def __init__(self, arch: str, num_classes: int, in_chans: int, mean=None, std=None, pretrained: str | None = None):
        super().__init__()
        # pretrained: a timm name with tag (e.g. resnet50.tv_in1k), whose weights timm fetches from the Hub
        self.net = timm.create_model(pretrained or arch, pretrained=pretrained is not None, num_classes=num_classes,
                                     in_chans=in_chans)
        cfg = self.net.pretrained_cfg or {}
        mean = list(mean if mean is not None else cfg.get("mean", (0.5,) * 3))
        std = list(std if std is not None else cfg.get("std", (0.25,) * 3))
        if len(mean) != in_chans:  # e.g. grey images on an RGB default: average the channels
            mean, std = [sum(mean) / len(mean)] * in_chans, [sum(std) / len(std)] * in_chans
        self.arch, self.in_chans = arch, in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.register_buffer("feature_mask", torch.ones(self.net.num_features))

    @property
    def num_classes(self) -> int:
        return self.net.num_classes

    @property
    def config(self) -> dict:
        return {"arch": self.arch, "num_classes": self.num_classes, "in_chans": self.in_chans,
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, C, H, W) or tokens (N, L, C), after the channel mask."""
        f = self.net.forward_features((x - self.mean) / self.std)
        mask = self.feature_mask.to(f.dtype)
        return f * (mask.view(1, -1, 1, 1) if f.ndim == 4 else mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate representation (N, D): pooled features before the classifier."""
        return self.net.forward_head(self.features(x), pre_logits=True).flatten(1)

    def reset_head(self, num_classes: int) -> "Classifier":
        """Replace the classifier with a new one (global pooling + linear), as transfer learning does."""
        self.net.reset_classifier(num_classes)
        return self


def from_config(config: dict) -> Classifier:
    return Classifier(config["arch"], config["num_classes"], config["in_chans"], config["mean"], config["std"])


def check_finite(model: nn.Module, what: str) -> nn.Module:
    """Raise DivergedError naming the first parameter or buffer holding NaN or inf; return the model otherwise."""
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        # detached: with torch 2.11 (the GPU machine's), isfinite of a repaired model's weights, which require grad,
        # raised "abs(): functions with out=... arguments don't support automatic differentiation"
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            raise DivergedError(f"{what}: weight '{name}' holds NaN or inf, so the training that made it diverged and "
                                f"nothing measured on it would mean anything. Lower the learning rate of the recipe "
                                f"that trained it (the scenario's train/inject settings) or fix the plugin's loop.")
    return model


def save(model: Classifier, path: Path) -> None:
    save_model(model, str(path))
    Path(path).with_suffix(".config.json").write_text(json.dumps(model.config, indent=1))


# Buffers that record a model's training history rather than what it computes: a backdoored model was trained for
# more batches than a clean one, so a detector could tell them apart by this count alone (TDC's detectors were
# caught reading it). With the default batch-norm momentum the count changes no output.
HISTORY = ("num_batches_tracked",)


def for_defense(src: Path, dst: Path) -> None:
    """The copy of a model a defense receives: the same weights and statistics, its training-history counters
    (HISTORY) zeroed, and no file metadata beyond safetensors' format tag."""
    from safetensors.torch import load_file, save_file
    t = load_file(str(src))
    for k in t:
        if k.rsplit(".", 1)[-1] in HISTORY:
            t[k] = torch.zeros_like(t[k])
    save_file(t, str(dst), metadata={"format": "pt"})


def forget_history(model: nn.Module) -> nn.Module:
    """In place: zero the HISTORY buffers, as for_defense does to the file."""
    for name, b in model.named_buffers():
        if name.rsplit(".", 1)[-1] in HISTORY:
            b.zero_()
    return model


def load(path: Path, config: dict | None = None) -> Classifier:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: only .safetensors checkpoints are loaded (a pickle can run code); "
                              f"convert it with safetensors.torch.save_model")
    if config is None:  # beside the weights: <name>.config.json (the store) or config.json (a Hub repo)
        cfg = next((c for c in (path.with_suffix(".config.json"), path.with_name("config.json")) if c.is_file()), None)
        if cfg is None:
            raise CheckpointError(f"{path}: no {path.with_suffix('.config.json').name} or config.json beside it")
        config = json.loads(cfg.read_text())
    model = from_config(config)
    try:
        missing, unexpected = load_model(model, str(path), strict=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a valid checkpoint for {config['arch']}: {e}") from e
    return model


def head_parameters(model: Classifier) -> list[nn.Parameter]:
    return list(model.net.get_classifier().parameters())


def blocks(model: Classifier) -> list[list[nn.Parameter]]:
    """The network's blocks in forward order, head excluded, from timm's own parameter grouping
    (`group_matcher(coarse=False)`: stem, then one group per block)."""
    from timm.models import group_parameters

    head = {id(p) for p in head_parameters(model)}
    named = dict(model.net.named_parameters())
    groups = group_parameters(model.net, model.net.group_matcher(coarse=False))
    out = []
    for _, names in sorted(groups.items()):
        params = [named[n] for n in names if id(named[n]) not in head]
        if params:
            out.append(params)
    return out


def set_protocol(model: Classifier, protocol: str, k: int | None = None) -> Classifier:
    """Freeze what the fine-tuning protocol keeps fixed: `full` trains all, `linear` only the
    head, `last_blocks` the last k blocks and the head."""
    if protocol == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = head_parameters(model)
    if protocol == "last_blocks":
        bl = blocks(model)
        if k > len(bl):
            raise ValueError(f"{model.arch} has {len(bl)} blocks; cannot train the last {k}")
        trainable += [p for group in bl[-k:] for p in group]
    elif protocol != "linear":
        raise ValueError(f"unknown protocol {protocol!r}")
    for p in trainable:
        p.requires_grad_(True)
    return model
