"""Random Backdoor (Salem et al. 2022): a random pattern at a random location, per input."""
import torch

from benchmark.api import Attack


class RandomBackdoor(Attack):
    def __init__(self, **params):
        super().__init__(**params)
        self.generator = torch.Generator().manual_seed(params["seed"])

    def side(self, height: int) -> int:
        return max(1, round(self.params["size"] * height / self.params["reference_resolution"]))

    def draw(self, n: int, c: int, h: int, w: int):
        """Per input: a pattern (n, c, s, s) and a top-left corner (rows, cols), all on the CPU."""
        s = self.side(h)
        pattern = torch.rand(n, c, s, s, generator=self.generator)
        top = torch.randint(0, h - s + 1, (n,), generator=self.generator)
        left = torch.randint(0, w - s + 1, (n,), generator=self.generator)
        return pattern, top, left

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        pattern, top, left = self.draw(n, c, h, w)
        s = pattern.shape[-1]
        ar = torch.arange(s)
        rows = (top.view(n, 1) + ar).view(n, 1, s, 1).to(x.device)
        cols = (left.view(n, 1) + ar).view(n, 1, 1, s).to(x.device)
        out = x.clone()
        out[torch.arange(n, device=x.device).view(n, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1),
            rows, cols] = pattern.to(device=x.device, dtype=x.dtype)
        return out
