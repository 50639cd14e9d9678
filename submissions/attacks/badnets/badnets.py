"""BadNets (Gu et al. 2019): a small patch in the bottom-right corner."""
import torch

from benchmark.api import Attack


class BadNets(Attack):
    def patch(self, height: int, width: int):
        """(row slice, col slice, pattern tensor) of the trigger for an image of this size."""
        scale = height / self.params["reference_resolution"]
        s = max(1, round(self.params["size"] * scale))
        mg = round(self.params["margin"] * scale)
        rows, cols = slice(height - mg - s, height - mg), slice(width - mg - s, width - mg)
        if self.params["pattern"] == "white":
            pattern = torch.ones(s, s)
        else:
            i, j = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
            pattern = ((i + j) % 2 == 0).float()
        return rows, cols, pattern

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols, pattern = self.patch(x.shape[-2], x.shape[-1])
        out = x.clone()
        out[..., rows, cols] = pattern.to(device=x.device, dtype=x.dtype)
        return out
