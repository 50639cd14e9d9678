"""Blended (Chen et al. 2017): x' = (1 - a) x + a k over the whole image."""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.api import Attack


class Blended(Attack):
    def __init__(self, **params):
        super().__init__(**params)
        if params["key"] == "image":
            path = Path(params["key_image"])
            path = path if path.is_absolute() else Path(__file__).with_name(params["key_image"])
            if not path.is_file():
                raise ValueError(f"key_image {path} not found")
            from PIL import Image
            self._image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 255

    def key(self, channels: int, height: int, width: int) -> torch.Tensor:
        """The key k (C, H, W) in [0, 1] for images of this shape."""
        if self.params["key"] == "noise":
            g = torch.Generator().manual_seed(self.params["key_seed"])
            return torch.rand(channels, height, width, generator=g)
        k = F.interpolate(self._image[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        if channels == 1:
            k = (k * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        return k.clamp(0, 1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        a = self.params["alpha"]
        k = self.key(*x.shape[-3:]).to(device=x.device, dtype=x.dtype)
        return (1 - a) * x + a * k
