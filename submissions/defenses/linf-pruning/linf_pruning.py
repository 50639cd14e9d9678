"""l_inf neuron pruning (Cheng et al. 2020), on the last feature map or a chosen batch-norm layer, then a
brief fine-tune."""
import torch
from torch import nn

from benchmark import Defense, DefenseOutput, models
from benchmark.scenario import Recipe

STATISTICS = ("linf", "l2", "l1")


def _bn(model, layer: str) -> nn.BatchNorm2d:
    mod = dict(model.named_modules()).get(layer)
    if not isinstance(mod, nn.BatchNorm2d):
        names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
        raise ValueError(f"layer {layer!r} is not a BatchNorm2d of {model.arch}; use 'features' or one of "
                         f"{', '.join(names[-6:])} ...")
    return mod


def channel_norms(model, clean, device, statistic: str = "linf", layer: str = "features",
                  batch_size: int = 256) -> torch.Tensor:
    """Mean over inputs of each channel's activation-map norm: (C,). `features`: the last feature map;
    else the output of batch-norm module `layer` after ReLU (what the next convolution sees)."""
    total, n, seen = None, 0, {}
    model.to(device).eval()
    hook = None
    if layer != "features":
        hook = _bn(model, layer).register_forward_hook(lambda m, i, o: seen.__setitem__("a", o.relu()))
    try:
        with torch.inference_mode():
            for x, _ in clean.batches(batch_size, device):
                if hook is None:
                    f = model.features(x).float()
                else:
                    model(x)
                    f = seen["a"].float()
                f = f.flatten(2) if f.ndim == 4 else f.transpose(1, 2)  # (N, C, positions)
                a = f.abs()
                s = a.amax(2) if statistic == "linf" else (a.pow(2).sum(2).sqrt() if statistic == "l2" else a.sum(2))
                total = s.sum(0) if total is None else total + s.sum(0)
                n += len(x)
    finally:
        if hook is not None:
            hook.remove()
    return (total / n).cpu()


def robust_z(s: torch.Tensor) -> torch.Tensor:
    """(s - median) / (1.4826 * MAD), with numpy's median (mean of the two middle values). When over half
    the channels share one value (e.g. dead ReLU channels at 0) the MAD is 0; the scale is then the mean
    absolute deviation from the median times sqrt(pi/2) (its consistency constant for normal data)."""
    import numpy as np
    v = s.double().numpy()
    med = np.median(v)
    scale = 1.4826 * np.median(np.abs(v - med))
    if scale == 0:
        scale = np.sqrt(np.pi / 2) * np.mean(np.abs(v - med))
    return torch.from_numpy((v - med) / scale if scale > 0 else np.zeros_like(v))


class LinfPruning(Defense):
    def __init__(self, **params):
        super().__init__(**params)
        if params["statistic"] not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {params['statistic']!r}")
        if not 0 <= params["max_ratio"] <= 1 or not 0 <= params["ratio"] <= 1:
            raise ValueError("ratio and max_ratio must lie in [0, 1]")

    def select(self, z: torch.Tensor) -> list[int]:
        order = torch.argsort(z, descending=True, stable=True)
        if self.params["ratio"] > 0:
            return order[:round(self.params["ratio"] * len(z))].tolist()
        cap = int(self.params["max_ratio"] * len(z))
        return [int(c) for c in order[:cap] if z[c] > self.params["threshold"]]

    def run(self, model, clean, ctx):
        p = self.params
        norms = channel_norms(model, clean, ctx.device, p["statistic"], p["layer"])
        z = robust_z(norms)
        pruned = self.select(z)
        if p["layer"] == "features":  # the model's own channel mask: stays through the fine-tune
            with torch.no_grad():
                model.feature_mask[pruned] = 0.0
            keep_pruned = None
        else:  # a batch-norm neuron: scale and shift to 0 (its ReLU output is then 0), kept there while fine-tuning
            bn = _bn(model, p["layer"])

            def keep_pruned():
                with torch.no_grad():
                    bn.weight[pruned] = 0.0
                    bn.bias[pruned] = 0.0
            keep_pruned()
        models.set_protocol(model, "full")
        recipe = Recipe(epochs=p["finetune_epochs"], lr=p["lr"], batch_size=p["batch_size"])
        ctx.train(model, clean, recipe, desc="linf-pruning finetune", after_step=keep_pruned)
        return DefenseOutput(
            model=model,
            model_score=float(z.max()),
            info={"layer": "last feature map" if p["layer"] == "features" else p["layer"], "channels": len(z),
                  "pruned": pruned,
                  "pruned_z": [round(float(z[c]), 3) for c in pruned], "statistic": p["statistic"]},
        )
