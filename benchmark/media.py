"""Small PNGs that show what an attack does, made when its cells run and stored beside its results:
`triggers.png` (clean images, the same images triggered, and the difference amplified) and `gradcam.png`
(a triggered input and the Grad-CAM map of the backdoored model for the attack's target class, as in the
l_inf-pruning seed paper)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SCALE = 3  # nearest-neighbour upscaling so that 32 px images are visible


def _to_pil(rows: list[torch.Tensor]) -> Image.Image:
    """rows of (N, C, H, W) tensors in [0, 1] -> one RGB grid image."""
    grid = torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)  # (C, rows*H, N*W)
    if grid.shape[0] == 1:
        grid = grid.expand(3, -1, -1)
    arr = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img.resize((img.width * SCALE, img.height * SCALE), Image.NEAREST)


def _heat(c: torch.Tensor) -> torch.Tensor:
    """A blue-to-red colour map of values in [0, 1]: (H, W) -> (3, H, W)."""
    return torch.stack([(1.5 - (4 * c - 3).abs()), (1.5 - (4 * c - 2).abs()), (1.5 - (4 * c - 1).abs())]).clamp(0, 1)


def gradcam(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) at the deepest stage of the network whose map is at least 4x4 at this
    input size (the last one is 1x1 at 32 px): ReLU(sum_c mean(d y_t / d A_c) A_c), upsampled, scaled to [0, 1]."""
    model.eval()
    stages = [f["module"] for f in getattr(model.net, "feature_info", [])] or []
    modules = dict(model.net.named_modules())
    acts = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o))
             for n in stages if n in modules]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    spatial = [n for n in stages if n in acts and acts[n].ndim == 4 and min(acts[n].shape[-2:]) >= 4]
    a = acts[spatial[-1]] if spatial else model.features(x)
    score = logits.gather(1, target.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(score, a)
    cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    top = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
    return (cam / top).detach()


def write(folder: Path, model, attack, images: torch.Tensor, targets: torch.Tensor, n: int = 4) -> list[Path]:
    """Write triggers.png and gradcam.png for the first n images (uint8, NCHW) into folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    x = images[:n].float() / 255
    with torch.no_grad():
        t = attack.apply(x.clone()).clamp(0, 1)
    diff = (t - x).abs()
    diff = diff / diff.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    _to_pil([x, t, diff]).save(folder / "triggers.png", optimize=False)
    cam = gradcam(model, t.clone().requires_grad_(False), targets[:n])
    grey = t.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    overlay = torch.stack([0.5 * grey[i] + 0.5 * _heat(cam[i]) for i in range(len(t))])
    _to_pil([t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t, overlay]).save(folder / "gradcam.png", optimize=False)
    return [folder / "triggers.png", folder / "gradcam.png"]
