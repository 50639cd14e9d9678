"""SIG (Barni et al. 2019): a clean-label horizontal sinusoid."""
import math

import torch

from benchmark.api import Attack, Poisoning


class SIG(Attack):
    def signal(self, width: int) -> torch.Tensor:
        """v(j) for j = 0..m-1, the same for every row and channel."""
        j = torch.arange(width, dtype=torch.float64)
        return (self.params["amplitude"] / 255) * torch.sin(2 * math.pi * j * self.params["frequency"] / width)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        v = self.signal(x.shape[-1]).to(device=x.device, dtype=x.dtype)
        return (x + v).clamp(0, 1)

    def targets(self, y, num_classes, target):
        return torch.full_like(y, target)

    def poison(self, data, budget, generator):
        candidates = torch.nonzero(data.labels == budget.target).flatten()
        if self.params["target_share"] > 0:
            n = int(round(self.params["target_share"] * len(candidates)))
        else:
            n = int(round(budget.poison_rate * len(data)))
        if n > len(candidates):
            raise ValueError(f"clean-label poisoning at rate {budget.poison_rate} needs {n} target-class images; "
                             f"class {budget.target} has {len(candidates)} (set target_share instead)")
        idx = torch.sort(candidates[torch.randperm(len(candidates), generator=generator)[:n]]).values
        self.info = {"poisoned": n, "effective_poison_rate": n / len(data), "target_class_share": n / len(candidates)}
        return Poisoning(idx, self.apply_uint8(data.images[idx]), data.labels[idx].clone())
