"""Adversarial Neuron Pruning (Wu & Wang 2021): prune the neurons most sensitive to adversarial perturbation."""
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.api import Defense, DefenseOutput, to_float


class _Noisy:
    """Per-channel mask m and perturbations (delta, xi) on a batch-norm layer:
    y = BN(x) with weight * (m + delta) and bias * (1 + xi), as in the reference NoisyBatchNorm2d."""

    def __init__(self, bn: nn.BatchNorm2d, eps: float):
        c, dev = bn.num_features, bn.weight.device
        self.bn, self.eps, self.perturb = bn, eps, False
        self.mask = torch.ones(c, device=dev, requires_grad=True)
        self.delta = torch.zeros(c, device=dev, requires_grad=True)
        self.xi = torch.zeros(c, device=dev, requires_grad=True)
        bn.forward = self.forward

    def forward(self, x):
        bn = self.bn
        w = bn.weight * (self.mask + self.delta) if self.perturb else bn.weight * self.mask
        b = bn.bias * (1 + self.xi) if self.perturb else bn.bias
        # batch statistics, running statistics left untouched (the reference optimises in train mode)
        return F.batch_norm(x, None, None, w, b, True, 0.0, bn.eps)

    def reset(self, generator):
        with torch.no_grad():
            for t in (self.delta, self.xi):
                t.copy_((torch.rand(t.shape, generator=generator) * 2 - 1).mul_(self.eps).to(t.device))

    def clip(self):
        with torch.no_grad():
            self.mask.clamp_(0, 1)
            self.delta.clamp_(-self.eps, self.eps)
            self.xi.clamp_(-self.eps, self.eps)

    def restore(self):
        del self.bn.forward


class ANP(Defense):
    def run(self, model, clean, ctx):
        p, dev = self.params, ctx.device
        model.to(dev).eval()
        for q in model.parameters():
            q.requires_grad_(False)
        layers = {name: _Noisy(m, p["eps"]) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        if not layers:
            raise ValueError(f"{model.arch} has no BatchNorm2d layer: ANP perturbs batch-norm neurons")
        masks = [l.mask for l in layers.values()]
        noise = [t for l in layers.values() for t in (l.delta, l.xi)]
        mask_opt = torch.optim.SGD(masks, lr=p["mask_lr"], momentum=0.9)
        noise_opt = torch.optim.SGD(noise, lr=p["eps"] / p["pgd_steps"]) if p["eps"] > 0 else None
        g = ctx.generator(300)
        x_all, y_all = to_float(clean.images), clean.labels
        bs = min(p["batch_size"], len(clean))
        for _ in range(p["iterations"]):
            idx = torch.randint(0, len(clean), (bs,), generator=g)
            x, y = x_all[idx].to(dev), y_all[idx].to(dev)
            if noise_opt is not None:  # maximise the loss over the perturbation (one-step PGD by default)
                for l in layers.values():
                    l.reset(g)
                    l.perturb = True
                for _ in range(p["pgd_steps"]):
                    loss = -F.cross_entropy(model(x), y)
                    noise_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    for t in noise:  # a signed-gradient (FGSM-style) ascent step of size eps / pgd_steps, as the
                        t.grad.sign_()  # reference does: raw gradients are ~1e-3 and would leave the noise random
                    noise_opt.step()
                    for l in layers.values():
                        l.clip()
            # minimise alpha * natural loss + (1 - alpha) * perturbed loss over the masks
            for l in layers.values():
                l.perturb = p["eps"] > 0
            robust = F.cross_entropy(model(x), y) if p["eps"] > 0 else 0.0
            for l in layers.values():
                l.perturb = False
            natural = F.cross_entropy(model(x), y)
            loss = p["alpha"] * natural + (1 - p["alpha"]) * robust
            mask_opt.zero_grad(set_to_none=True)
            loss.backward()
            mask_opt.step()
            for l in layers.values():
                l.clip()
        pruned = {}
        with torch.no_grad():
            for name, l in layers.items():
                idx = torch.nonzero(l.mask < p["threshold"]).flatten()
                l.bn.weight[idx] = 0.0  # prune: the neuron's batch-norm scale to zero, as the reference does
                l.restore()
                if len(idx):
                    pruned[name] = idx.tolist()
        for q in model.parameters():
            q.requires_grad_(True)
        total = sum(l.bn.num_features for l in layers.values())
        n = sum(len(v) for v in pruned.values())
        return DefenseOutput(model=model.eval(), info={"pruned": pruned, "pruned_neurons": n, "neurons": total,
                                                       "selection": f"mask < {p['threshold']} (no test data)"})
