"""Neural Cleanse (Wang et al. 2019): reverse-engineer the smallest trigger per class; an outlier is a backdoor."""
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.api import Defense, DefenseOutput, ImageSet, Recipe, to_float, to_uint8


def _median(values: list) -> Fraction:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def anomaly_index(norms) -> np.ndarray:
    """A_t = |l_t - median(l)| / (1.4826 * median|l - median(l)|), numpy's median (mean of the two middle
    values for an even count). A MAD of 0 gives 0 for l_t at the median and inf elsewhere.
    Computed in exact rational arithmetic on the norms' float values and rounded once at the end, so indices
    that are equal by the definition are equal bit for bit: with float arithmetic the two indices of a 2-class
    model (both 1/1.4826) differed in the last bit from model to model, and a model-level AUROC ranked that
    noise (0.556 instead of 0.5 over 17 models)."""
    l = [Fraction(float(v)) for v in np.asarray(norms, dtype=np.float64).ravel()]
    med = _median(l)
    dev = [abs(v - med) for v in l]
    mad = Fraction(14826, 10000) * _median(dev)
    if mad == 0:
        return np.array([0.0 if d == 0 else np.inf for d in dev])
    return np.array([float(d / mad) for d in dev])


def model_score(norms) -> float:
    """The largest anomaly index among classes whose norm lies BELOW the median (small triggers only)."""
    l = np.asarray(norms, dtype=np.float64)
    a = anomaly_index(l)
    low = l < np.median(l)
    return float(a[low].max()) if low.any() else 0.0


def stamp(x, mask, pattern):
    return (1 - mask) * x + mask * pattern


class NeuralCleanse(Defense):
    def reverse(self, model, x_all, target, ctx):
        """Smallest mask (and its pattern) that sends the clean budget to `target`: minimise
        CE(f(stamp(x)), t) + cost * |m|_1, with the paper's cost schedule (raise the cost while the trigger
        works, lower it while it does not); keep the smallest mask that reached `success`."""
        p, dev = self.params, ctx.device
        n, c, h, w = x_all.shape
        g = ctx.generator(100 + target)
        m_raw = (torch.rand(1, 1, h, w, generator=g).to(dev) - 0.5).requires_grad_(True)
        p_raw = (torch.rand(1, c, h, w, generator=g).to(dev) * 2 - 1).requires_grad_(True)
        opt = torch.optim.Adam([m_raw, p_raw], lr=p["lr"], betas=(0.5, 0.9))
        cost, best, best_norm = p["init_cost"], None, float("inf")
        up, down, hits, misses = 0, 0, 0, 0
        t = torch.full((min(p["batch_size"], n),), target, device=dev)
        for step in range(p["steps"]):
            idx = torch.randint(0, n, (min(p["batch_size"], n),), generator=g)
            x = x_all[idx].to(dev)
            mask = torch.tanh(m_raw) / 2 + 0.5
            pattern = torch.tanh(p_raw) / 2 + 0.5
            out = model(stamp(x, mask, pattern))
            ce = F.cross_entropy(out, t)
            l1 = mask.abs().sum()
            loss = ce + cost * l1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            acc = float((out.argmax(1) == t).float().mean())
            if acc >= p["success"] and float(l1.detach()) < best_norm:
                best_norm, best = float(l1.detach()), (mask.detach().clone(), pattern.detach().clone())
            # cost schedule (Wang et al.'s reference: patience, multiplier 1.5 up / 1.5**1.5 down)
            hits, misses = (hits + 1, 0) if acc >= p["success"] else (0, misses + 1)
            if hits >= p["patience"]:
                cost, hits = cost * 1.5, 0
            elif misses >= p["patience"]:
                cost, misses = cost / 1.5 ** 1.5, 0
        if best is None:  # never reached the success rate: the final mask, marked
            mask = (torch.tanh(m_raw) / 2 + 0.5).detach()
            best, best_norm = (mask, (torch.tanh(p_raw) / 2 + 0.5).detach()), float(mask.abs().sum())
            return best, best_norm, False
        return best, best_norm, True

    def run(self, model, clean, ctx):
        p = self.params
        model.to(ctx.device).eval()
        for q in model.parameters():
            q.requires_grad_(False)
        x_all = to_float(clean.images)
        triggers, norms, reached = [], [], []
        for t in range(model.num_classes):
            trig, norm, ok = self.reverse(model, x_all, t, ctx)
            triggers.append(trig)
            norms.append(norm)
            reached.append(ok)
        a = anomaly_index(norms)
        med = float(np.median(norms))
        flagged = [t for t in range(len(norms)) if norms[t] < med and a[t] > p["threshold"]]
        info = {"norms": [round(v, 4) for v in norms], "anomaly_index": [round(float(v), 4) for v in a],
                "flagged": flagged, "target_guess": int(np.argmin(norms)), "reached_success": reached,
                "classes": model.num_classes}
        if model.num_classes < 3:
            info["warning"] = ("with 2 classes both anomaly indices equal 1/1.4826 = 0.674 whatever the norms: "
                               "the MAD test cannot tell the classes apart")
        for q in model.parameters():
            q.requires_grad_(True)
        if not flagged:
            return DefenseOutput(model=None, model_score=model_score(norms), info=info)
        # repair by unlearning: a share of the clean budget carries a flagged class's reversed trigger, with
        # its TRUE label; fine-tune on it
        g = ctx.generator(200)
        x = x_all.clone()
        chosen = torch.randperm(len(x), generator=g)[:int(round(p["unlearn_ratio"] * len(x)))]
        for i, j in enumerate(chosen.tolist()):
            mask, pattern = triggers[flagged[i % len(flagged)]]
            x[j] = stamp(x[j:j + 1], mask.cpu(), pattern.cpu())[0]
        unlearn = ImageSet(to_uint8(x), clean.labels.clone(), list(clean.classes))
        ctx.train(model, unlearn, Recipe(epochs=p["unlearn_epochs"], lr=p["lr_unlearn"], batch_size=p["batch_size"]),
                  desc="neural-cleanse unlearning")
        info["unlearned_with"] = len(chosen)
        return DefenseOutput(model=model, model_score=model_score(norms), info=info)
