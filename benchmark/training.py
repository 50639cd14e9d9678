"""Training and evaluation loops over tensors: whole batches, no per-sample Python work."""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import device as dev
from .data import ImageSet, to_float
from .errors import DivergedError
from .scenario import Augment, Recipe

Transform = Callable[[torch.Tensor], torch.Tensor]


def augment(x: torch.Tensor, aug: Augment, generator: torch.Generator) -> torch.Tensor:
    """Batched random horizontal flip and random crop (zero padding), one draw per image."""
    n, _, h, w = x.shape
    if aug.hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    if aug.crop_pad:
        p = aug.crop_pad
        padded = F.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        rows = (oy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (ox.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        x = padded[batch, chan, rows, cols]
    return x


def schedule(opt, recipe: Recipe, total_steps: int):
    """The recipe's learning-rate schedule over `total_steps` optimiser steps (stepped once per batch)."""
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=max(total_steps, 1))
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(total_steps, 1))))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except batch-norm layers whose parameters are all frozen keep their statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            ps = list(m.parameters(recurse=False))
            if ps and not any(p.requires_grad for p in ps):
                m.eval()


def fit(model: nn.Module, data: ImageSet, recipe: Recipe, *, device: torch.device, seed: int,
        desc: str = "train", progress: bool = True, after_step: Optional[Callable[[], None]] = None) -> nn.Module:
    """Train the parameters that require grad with SGD (Nesterov) and the recipe's schedule."""
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    n, bs = len(data), recipe.batch_size
    if recipe.epochs == 0 or not params or n < 2:
        return model
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = n // bs + (1 if n % bs >= 2 else 0)  # a last batch of one would break batch-norm
    opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0,
                          weight_decay=recipe.weight_decay)
    sched = schedule(opt, recipe, recipe.epochs * steps_per_epoch)
    scaler = dev.grad_scaler(device)
    images, labels = data.images, data.labels
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
    set_train_mode(model)
    bar = tqdm(total=recipe.epochs * steps_per_epoch, desc=desc, leave=False, disable=not progress, unit="step")
    for _ in range(recipe.epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(steps_per_epoch):
            idx = perm[s * bs:(s + 1) * bs]
            x = augment(to_float(images[idx], device), recipe.augment, g)
            y = labels[idx].to(device, non_blocking=True)
            with dev.autocast(device):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if after_step is not None:
                after_step()
            bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return model


@torch.inference_mode()
def predict(model: nn.Module, data: ImageSet, *, device: torch.device, transform: Optional[Transform] = None,
            batch_size: int = 512) -> torch.Tensor:
    """Predicted labels for every image, optionally after `transform` (e.g. a trigger) on the device."""
    out = [y.argmax(1).cpu() for y in _forward(model, data, device, transform, batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


@torch.inference_mode()
def logits(model: nn.Module, data: ImageSet, *, device: torch.device, transform: Optional[Transform] = None,
           batch_size: int = 512) -> torch.Tensor:
    out = [y.float().cpu() for y in _forward(model, data, device, transform, batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """`model.to(device)`, skipped when the model's first parameter is already there. `.to` walks every module and
    tensor, about 1 ms for a resnet18, a sixth of the time a GPU takes to evaluate 1,024 small images; the harness
    always moves a model as a whole, so the first parameter says where all of it is."""
    d = torch.device(device)
    p = next(model.parameters(), None)
    if p is None or p.device.type != d.type or (d.index is not None and p.device.index != d.index):
        return model.to(d)
    return model


def _forward(model, data, device, transform, batch_size):
    """The model's outputs batch by batch, on the device (the argmax is taken there: one integer per image
    crosses back to the CPU instead of a row of logits). Raises DivergedError at the end if any output is NaN or
    inf (checked on the device, one synchronisation per call), which an argmax would silently turn into class 0."""
    on_device(model, device).eval()
    finite = torch.ones((), dtype=torch.bool, device=device)
    for i in range(0, len(data), batch_size):
        x = to_float(data.images[i:i + batch_size], device)
        if transform is not None:
            x = transform(x)
        with dev.autocast(device):
            y = model(x)
        finite &= torch.isfinite(y).all()
        yield y
    if not bool(finite):
        what = "the inputs after the transform (e.g. a trigger)" if transform is not None else "the inputs"
        raise DivergedError(f"the model's outputs are NaN or inf on some of {what}: the model, or the trigger that "
                            f"made the inputs, came from a training run that diverged, so no metric would "
                            "mean anything")


@torch.inference_mode()
def embeddings(model: nn.Module, data: ImageSet, *, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """The penultimate representation (`Classifier.embed`) of every image, (N, D) float32 on the CPU."""
    on_device(model, device).eval()
    out = [model.embed(x).float().cpu() for x, _ in data.batches(batch_size, device)]
    return torch.cat(out) if out else torch.empty(0, 0)


@torch.inference_mode()
def scores(fn: Transform, data: ImageSet, *, device: torch.device, transform: Optional[Transform] = None,
           batch_size: int = 256) -> torch.Tensor:
    """Apply a per-input scorer to every image (optionally transformed first); returns a 1-D CPU tensor."""
    out = []
    for x, _ in data.batches(batch_size, device):
        if transform is not None:
            x = transform(x)
        out.append(torch.as_tensor(fn(x)).float().flatten().cpu())
    return torch.cat(out) if out else torch.empty(0)
