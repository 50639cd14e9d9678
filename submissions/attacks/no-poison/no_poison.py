"""The no-poison attack: the attacker's whole training budget with no poison. A control, not an attack."""
import torch

from benchmark.api import Attack, Poisoning


class NoPoison(Attack):
    plants_backdoor = False

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def poison(self, data, budget, generator):
        return Poisoning(torch.zeros(0, dtype=torch.long), data.images[:0].clone(), data.labels[:0].clone())
