"""WaNet (Nguyen & Tran 2021): a fixed, smooth, nearly invisible warp; noise mode keeps true labels."""
import torch
import torch.nn.functional as F

from benchmark.api import Attack, Poisoning


class WaNet(Attack):
    def grid(self, height: int, width: int) -> torch.Tensor:
        """The fixed sampling grid (1, H, W, 2), in grid_sample's [-1, 1] coordinates."""
        k, s = self.params["k"], self.params["s"]
        g = torch.Generator().manual_seed(self.params["field_seed"])
        ins = torch.rand(1, 2, k, k, generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        noise = F.interpolate(ins, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        identity = torch.stack((xs, ys), 2)[None]
        return ((identity + s * noise / height) * self.params["grid_rescale"]).clamp(-1, 1)

    def _warp(self, x, grid):
        return F.grid_sample(x, grid.to(device=x.device, dtype=x.dtype).expand(len(x), -1, -1, -1),
                             align_corners=True)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._warp(x, self.grid(x.shape[-2], x.shape[-1]))

    def apply_noise(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Noise mode: the field plus per-image random jitter of up to one pixel."""
        n, _, h, w = x.shape
        jitter = (torch.rand(n, h, w, 2, generator=generator) * 2 - 1) / h
        grid = (self.grid(h, w) + jitter).clamp(-1, 1)
        return F.grid_sample(x, grid.to(device=x.device, dtype=x.dtype), align_corners=True)

    def poison(self, data, budget, generator):
        bd = super().poison(data, budget, generator)
        rest = torch.ones(len(data), dtype=torch.bool)
        rest[bd.indices] = False
        rest = torch.nonzero(rest).flatten()
        n_cross = min(int(round(self.params["cross_ratio"] * budget.poison_rate * len(data))), len(rest))
        cross = torch.sort(rest[torch.randperm(len(rest), generator=generator)[:n_cross]]).values
        noisy = self.apply_uint8(data.images[cross], fn=lambda x: self.apply_noise(x, generator))
        self.info = {"poisoned": len(bd.indices), "noise_mode": n_cross}
        return Poisoning(torch.cat([bd.indices, cross]), torch.cat([bd.images, noisy]),
                         torch.cat([bd.labels, data.labels[cross]]))
