"""Input-aware dynamic backdoor (Nguyen & Tran 2020): a learned, input-specific trigger."""
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from benchmark.api import Attack, augment, schedule, set_train_mode, to_float

EPS = 1e-7


def _block(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class EncoderDecoder(nn.Module):
    """Two conv stages down, two up; output squashed to [0, 1] by tanh / 2 + 0.5, at the input's size."""

    def __init__(self, c_in: int, c_out: int, width: int):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            *_block(c_in, w), *_block(w, w), nn.MaxPool2d(2),
            *_block(w, 2 * w), *_block(2 * w, 2 * w), nn.MaxPool2d(2),
            nn.Upsample(scale_factor=2), *_block(2 * w, 2 * w), *_block(2 * w, w),
            nn.Upsample(scale_factor=2), *_block(w, w), nn.Conv2d(w, c_out, 3, padding=1))

    def forward(self, x):
        out = self.net(x)
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.tanh(out) / 2 + 0.5


def sharpen(m):
    return torch.tanh(20 * m - 10) / 2 + 0.5


def distance(a, b):
    """Root-mean-square distance per sample. A distance below EPS counts as EPS: the square root's gradient is
    infinite at 0, so two identical outputs (a generator saturated to the same image) would otherwise turn the
    whole step's gradient into NaN (0 * inf) and the training would diverge."""
    return ((a - b) ** 2).flatten(1).mean(1).clamp_min(EPS ** 2).sqrt()


def diversity(x1, x2, t1, t2):
    """|x1 - x2| / |t1 - t2| with root-mean-square distances per sample, averaged."""
    return (distance(x1, x2) / (distance(t1, t2) + EPS)).mean()


def mask_loss(x1, x2, M, p):
    """Phase 1 (the authors' train_mask_step): diversity and density of the SHARPENED masks T(M(x)), the masks
    the trigger uses, so the density bound holds for what is applied."""
    m1, m2 = sharpen(M(x1)), sharpen(M(x2))
    return p["lambda_div"] * diversity(x1, x2, m1, m2) + p["lambda_norm"] * F.relu(m1 - p["mask_density"]).mean()


class InputAware(Attack):
    poisons_data = False  # it trains the model itself: there is no poisoned training set to inspect
    def __init__(self, **params):
        super().__init__(**params)
        if not (0 < params["p_attack"] and params["p_attack"] + params["p_cross"] < 1):
            raise ValueError("p_attack must be > 0 and p_attack + p_cross < 1")
        self.G = self.M = None

    def _build(self, channels):
        self.G = EncoderDecoder(channels, channels, self.params["width"])
        self.M = EncoderDecoder(channels, 1, self.params["width"])

    def _trigger(self, x, source=None):
        """x + (G(s) - x) * T(M(s)) where s is the image the trigger is generated from (x itself by default)."""
        s = x if source is None else source
        return x + (self.G(s) - x) * sharpen(self.M(s))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.G is None:
            raise RuntimeError("input-aware: the generators are trained in plant(); load its state first")
        self.G.to(x.device).eval(), self.M.to(x.device).eval()
        with torch.no_grad():
            return self._trigger(x.float()).to(x.dtype)

    def _batches(self, n, bs, g):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - bs + 1 if n >= bs else 1, bs):
            yield perm[i:i + bs], torch.randperm(n, generator=g)[:len(perm[i:i + bs])]

    def plant(self, model, data, budget, ctx):
        p, dev, recipe = self.params, ctx.device, budget.inject
        g = ctx.generator(7)
        self._build(data.images.shape[1])
        G, M = self.G.to(dev), self.M.to(dev)
        bs = recipe.batch_size
        # phase 1: the mask generator alone
        opt_m = torch.optim.Adam(M.parameters(), lr=p["generator_lr"], betas=(0.5, 0.9))
        M.train()
        for _ in range(p["mask_epochs"]):
            for i1, i2 in self._batches(len(data), bs, g):
                loss = mask_loss(to_float(data.images[i1], dev), to_float(data.images[i2], dev), M, p)
                opt_m.zero_grad(set_to_none=True)
                loss.backward()
                opt_m.step()
        M.eval()
        for q in M.parameters():
            q.requires_grad_(False)
        # phase 2: classifier and pattern generator together
        model.to(dev)
        params = [q for q in model.parameters() if q.requires_grad]
        opt_c = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0,
                                weight_decay=recipe.weight_decay)
        opt_g = torch.optim.Adam(G.parameters(), lr=p["generator_lr"], betas=(0.5, 0.9))
        steps = recipe.epochs * max(1, len(data) // bs)
        sched = schedule(opt_c, recipe, steps)
        n_bd, n_cross = max(1, int(p["p_attack"] * bs)), int(p["p_cross"] * bs)
        losses = []
        bar = tqdm(total=recipe.epochs * (len(data) // bs), desc="plant input-aware", leave=False,
                   disable=not ctx.progress, unit="step")
        for _ in range(recipe.epochs):
            set_train_mode(model)
            G.train()
            for i1, i2 in self._batches(len(data), bs, g):
                x = augment(to_float(data.images[i1], dev), recipe.augment, g)
                x2 = augment(to_float(data.images[i2], dev), recipe.augment, g)
                y = data.labels[i1].to(dev)
                k = min(n_bd, len(x) - n_cross - 1)
                bd = self._trigger(x[:k])
                cross = self._trigger(x[k:k + n_cross], source=x2[k:k + n_cross]) if n_cross else x[:0]
                inputs = torch.cat([bd, cross, x[k + n_cross:]])
                labels = torch.cat([self.targets(y[:k], data.num_classes, budget.target), y[k:]])
                loss = F.cross_entropy(model(inputs), labels)
                if n_cross:
                    m = min(k, n_cross)
                    loss = loss + p["lambda_div"] * diversity(x[:m], x2[k:k + m], self.G(x[:m]), self.G(x2[k:k + m]))
                opt_c.zero_grad(set_to_none=True)
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_c.step()
                opt_g.step()
                sched.step()
                losses.append(float(loss.detach()))
                bar.update()
        bar.close()
        model.eval()
        G.eval()
        self.info = {"final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])), "steps": len(losses)}
        return model

    def state(self):
        if self.G is None:
            return {}
        return {**{f"G.{k}": v for k, v in self.G.state_dict().items()},
                **{f"M.{k}": v for k, v in self.M.state_dict().items()}}

    def load_state(self, tensors):
        if not tensors:
            return
        first = tensors["G.net.0.weight"]  # (width, channels, 3, 3)
        if first.shape[0] != self.params["width"]:
            raise ValueError(f"saved generator has width {first.shape[0]}, parameters say {self.params['width']}")
        self._build(first.shape[1])
        self.G.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("G.")})
        self.M.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("M.")})
        self.G.eval(), self.M.eval()
