"""The base classes of attacks and defenses. A submission imports them from benchmark.api, which documents the
contract."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from . import models, training
from .data import ImageSet, to_float, to_uint8
from .scenario import AttackBudget, Recipe


class Plugin:
    manifest = None  # the parsed submission.yaml, set by the registry

    def __init__(self, **params: Any):
        self.params = params


@dataclass
class Context:
    """What the harness lends a plugin: the device, a seed, and its training loop."""
    device: torch.device
    seed: int
    progress: bool = True

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)

    def train(self, model: nn.Module, data: ImageSet, recipe: Recipe, desc: str = "train", **kw) -> nn.Module:
        """Fine-tune every layer of `model` on `data` with `recipe` (SGD, the harness's loop and schedule)."""
        models.set_protocol(model, "full")
        return training.fit(model, data, recipe, device=self.device, seed=self.seed, desc=desc,
                            progress=self.progress, **kw)

    def predict(self, model: nn.Module, data: ImageSet) -> torch.Tensor:
        return training.predict(model, data, device=self.device)


@dataclass
class Poisoning:
    """Which training samples an attack replaces, with what image (uint8) and what label."""
    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor

    def applied_to(self, data: ImageSet) -> ImageSet:
        images, labels = data.images.clone(), data.labels.clone()
        images[self.indices] = self.images
        labels[self.indices] = self.labels
        return ImageSet(images, labels, list(data.classes))


class Attack(Plugin):
    """A backdoor attack. Parameter `mode` (if declared): `all-to-one` (every triggered input goes
    to the budget's target) or `all-to-all` (label y goes to (y + 1) mod K).

    An attack whose trigger is learned or derived while planting (a generator, a universal
    perturbation) returns those tensors from `state()` and restores them in `load_state()`: the
    harness saves them with the backdoored model and reloads them wherever the trigger is applied.
    `info` (JSON) is recorded in every result of the attack (e.g. the trigger's norms)."""

    poisons_data = True  # False for an attack that controls training: there is no poisoned set to inspect
    # False for a control (the `no-poison` attack): its models are negatives in model-level detection
    plants_backdoor = True

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.info: dict = {}

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # abstract

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise ValueError(f"{type(self).__name__} keeps no state, but was given {sorted(tensors)}")

    def targets(self, y: torch.Tensor, num_classes: int, target: int) -> torch.Tensor:
        """The label each triggered input should receive."""
        if self.params.get("mode", "all-to-one") == "all-to-all":
            return (y + 1) % num_classes
        return torch.full_like(y, target)

    def poison(self, data: ImageSet, budget: AttackBudget, generator: torch.Generator) -> Poisoning:
        """Default data poisoning: round(rate * N) samples drawn from those whose label changes,
        triggered and relabelled."""
        goal = self.targets(data.labels, data.num_classes, budget.target)
        candidates = torch.nonzero(goal != data.labels).flatten()
        n = int(round(budget.poison_rate * len(data)))
        if n > len(candidates):
            raise ValueError(f"poison rate {budget.poison_rate} asks for {n} samples; "
                             f"only {len(candidates)} can be relabelled")
        idx = torch.sort(candidates[torch.randperm(len(candidates), generator=generator)[:n]]).values
        return Poisoning(idx, self.apply_uint8(data.images[idx]), goal[idx])

    def apply_uint8(self, images: torch.Tensor, fn=None, chunk: int = 512) -> torch.Tensor:
        """`apply` (or `fn`) on uint8 images, in chunks, back to uint8: how poisoned files are stored."""
        fn = fn or self.apply
        parts = [to_uint8(fn(to_float(images[i:i + chunk]))) for i in range(0, len(images), chunk)]
        return torch.cat(parts) if parts else images[:0].clone()

    def planted_poisoning(self, data: ImageSet, budget: AttackBudget, ctx: Context) -> Poisoning:
        """The poisoning the default plant() trains on: poison() with the cell's draw ctx.generator(1). The harness
        replays it to know which samples the attack touched (the defender's clean pool, sample-level scoring)."""
        return self.poison(data, budget, ctx.generator(1))

    def plant(self, model: nn.Module, data: ImageSet, budget: AttackBudget, ctx: Context) -> nn.Module:
        """Plant the backdoor into the clean upstream `model`: by default poison the data, then let the
        harness fine-tune on it with the scenario's injection recipe."""
        poisoned = self.planted_poisoning(data, budget, ctx).applied_to(data)
        return ctx.train(model, poisoned, budget.inject, desc=f"plant {self.manifest.name if self.manifest else ''}")


@dataclass
class DefenseOutput:
    """Any of: a repaired model; a model-level suspicion score (higher = more likely backdoored);
    a per-input scorer (batch of images -> 1-D tensor, higher = more likely triggered); per training
    sample (data position): a score (higher = more likely poisoned) and optionally hard flags (the samples
    the method would remove); free-form `info` recorded in the result (e.g. which channels were pruned)."""
    model: Optional[nn.Module] = None
    model_score: Optional[float] = None
    input_scorer: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    sample_scores: Optional[torch.Tensor] = None
    sample_flags: Optional[torch.Tensor] = None
    info: dict = field(default_factory=dict)


class Defense(Plugin):
    """`position = "model"`: run() on the delivered downstream model and the clean budget.
    `position = "data"`: inspect() the upstream training set (poison included, mask withheld) with the
    upstream model trained on it."""
    position = "model"

    def run(self, model: nn.Module, clean: ImageSet, ctx: Context) -> DefenseOutput:
        raise NotImplementedError  # abstract

    def inspect(self, model: nn.Module, train: ImageSet, ctx: Context) -> DefenseOutput:
        raise NotImplementedError  # abstract for position "data"
