"""Invisible perturbation (Liao et al. 2018): a bounded additive trigger, static or data-derived."""
import torch
import torch.nn.functional as F

from benchmark.api import Attack, to_float


class Invisible(Attack):
    def __init__(self, **params):
        super().__init__(**params)
        self.delta = None  # (C, H, W), set by plant() or load_state()

    @property
    def bound(self) -> float:
        return self.params["eps"] / 255

    def static_delta(self, c: int, h: int, w: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.params["pattern_seed"])
        return self.bound * torch.sign(torch.rand(c, h, w, generator=g) * 2 - 1)

    def universal_delta(self, model, data, device) -> torch.Tensor:
        """Projected signed-gradient ascent of mean log p(target | clip(x + delta)) over clean batches."""
        c, h, w = data.images.shape[1:]
        delta = torch.zeros(1, c, h, w, device=device, requires_grad=True)
        step, g = self.bound / 4, torch.Generator().manual_seed(self.params["pattern_seed"])
        model.to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for _ in range(self.params["uap_steps"]):
            idx = torch.randperm(len(data), generator=g)[:self.params["uap_batch"]]
            x = to_float(data.images[idx], device)
            loss = F.log_softmax(model((x + delta).clamp(0, 1)), 1)[:, self.target].mean()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta += step * grad.sign()
                delta.clamp_(-self.bound, self.bound)
        for p in model.parameters():
            p.requires_grad_(True)
        return delta.detach()[0].cpu()

    def plant(self, model, data, budget, ctx):
        if self.params["perturbation"] == "static":
            self.delta = self.static_delta(*data.images.shape[1:])
        else:
            self.target = budget.target
            self.delta = self.universal_delta(model, data, ctx.device)
        self.info = {"linf": float(self.delta.abs().max()), "l2": float(self.delta.norm()),
                     "linf_255": float(self.delta.abs().max() * 255)}
        return super().plant(model, data, budget, ctx)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.delta is None:  # a static pattern needs no planting
            if self.params["perturbation"] != "static":
                raise RuntimeError("the adversarial perturbation is derived in plant(); load its state first")
            self.delta = self.static_delta(*x.shape[-3:])
        return (x + self.delta.to(device=x.device, dtype=x.dtype)).clamp(0, 1)

    def state(self):
        return {"delta": self.delta} if self.delta is not None else {}

    def load_state(self, tensors):
        if "delta" in tensors:
            self.delta = tensors["delta"]
