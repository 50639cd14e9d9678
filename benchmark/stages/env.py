"""What the stages of one scenario share: its data (loaded once), the registry that makes plugins, the device."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..data import ImageSet, load as load_data, split
from ..plugins import Attack, Context, Poisoning
from ..registry import Registry
from ..scenario import PluginSpec, Scenario
from ..store import Artifact


@dataclass
class Data:
    up_train: ImageSet
    up_test: ImageSet
    down_train: ImageSet  # the victim's training set (validation held out); protocol none: up_train
    down_val: Optional[ImageSet]  # t* is chosen on it; protocol none: None (the attack's own targets)
    down_test: ImageSet   # protocol none: up_test


@dataclass
class Env:
    scenario: Scenario
    registry: Registry
    device: torch.device
    cache: Path                  # where decoded datasets are cached
    progress: bool = True
    log: Callable[[str], None] = print
    isolate: str = "none"        # how defenses run: "sandbox", "process" or "none" (isolation.MODES)
    _data: Optional[Data] = field(default=None, init=False)
    _replayed: tuple = field(default=(), init=False)  # (planted key, seed, Poisoning): the last poisoning replayed

    @property
    def data(self) -> Data:
        if self._data is None:
            sc = self.scenario
            up_train, up_test = load_data(sc.upstream.data, sc.image, self.cache, sc.base_dir)
            if not sc.downstream.transfers:  # no transfer: the victim's task is the upstream task
                self._data = Data(up_train, up_test, up_train, None, up_test)
                return self._data
            tr, te = load_data(sc.downstream.data, sc.image, self.cache, sc.base_dir)
            keep, val = split(tr.labels, sc.downstream.val_fraction, sc.downstream.split_seed)
            self._data = Data(up_train, up_test, tr.subset(keep), tr.subset(val), te)
        return self._data

    def ctx(self, seed: int) -> Context:
        return Context(self.device, seed, self.progress)

    def ident(self, kind: str, spec: PluginSpec) -> dict:
        """What of a plugin determines a stage: its name, resolved parameters and source hash."""
        params = self.registry.resolve_params(kind, spec.name, spec.params)
        return {"name": spec.name, "params": params, "code": self.registry.code_hash(kind, spec.name)}

    def attack(self, spec: PluginSpec, planted: Optional[Artifact] = None) -> Attack:
        """The attack plugin; with `planted` (its backdoor artifact), its learned trigger restored."""
        attack = self.registry.create("attack", spec.name, spec.params)
        if planted is not None:
            attack.load_state(planted.tensors("attack"))
        return attack

    def poisoning(self, attack: PluginSpec, planted: Artifact, seed: int) -> Poisoning:
        """The poisoning the default plant() made for this backdoor (Attack.planted_poisoning), replayed on the
        upstream training set. Kept for the last backdoor, whose cell's defenses all ask for it."""
        if self._replayed[:2] != (planted.key, seed):
            poisoning = self.attack(attack, planted).planted_poisoning(self.data.up_train, self.scenario.attack,
                                                                       self.ctx(seed))
            self._replayed = (planted.key, seed, poisoning)
        return self._replayed[2]
