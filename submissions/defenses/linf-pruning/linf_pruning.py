"""l_inf neuron pruning (Cheng et al. 2020), on the deepest batch-norm layer whose activation maps have spatial
extent (or a chosen layer, or the last feature map), then a brief fine-tune."""
import torch
from torch import nn

from benchmark.api import Defense, DefenseOutput, Recipe



def _bn(model, layer: str) -> nn.BatchNorm2d:
    mod = dict(model.named_modules()).get(layer)
    if not isinstance(mod, nn.BatchNorm2d):
        names = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
        raise ValueError(f"layer {layer!r} is not a BatchNorm2d of {model.arch}; use 'features' or one of "
                         f"{', '.join(names[-6:])} ...")
    return mod


def map_sizes(model, image_size: int, channels: int, device) -> dict[str, tuple[int, int]]:
    """Every BatchNorm2d module's output map (height, width) for one input of the model's size."""
    sizes, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[-2:]))))
    was = model.training
    try:
        model.to(device).eval()
        with torch.inference_mode():
            model(torch.zeros(1, channels, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return sizes


def auto_layer(model, image_size: int, channels: int, device, min_map: int) -> tuple[str, tuple[int, int]]:
    """The deepest BatchNorm2d whose output map is at least min_map x min_map: the l_inf norm of a map then
    differs from its mean (at 1x1 the l_inf, l2 and l1 norms of a channel all equal its one value)."""
    sizes = map_sizes(model, image_size, channels, device)
    wide = [n for n, (h, w) in sizes.items() if min(h, w) >= min_map]
    if not wide:
        raise ValueError(f"{model.arch} at {image_size} px has no batch-norm output of at least {min_map}x{min_map} "
                         f"(largest: {max(sizes.values()) if sizes else 'none'}); lower min_map or name a layer")
    return wide[-1], sizes[wide[-1]]


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
    def select(self, z: torch.Tensor) -> list[int]:
        order = torch.argsort(z, descending=True, stable=True)
        if self.params["ratio"] > 0:
            return order[:round(self.params["ratio"] * len(z))].tolist()
        cap = int(self.params["max_ratio"] * len(z))
        return [int(c) for c in order[:cap] if z[c] > self.params["threshold"]]

    def run(self, model, clean, ctx):
        p = self.params
        layer, size = p["layer"], None
        if layer == "auto":
            layer, size = auto_layer(model, clean.images.shape[-1], clean.images.shape[1], ctx.device, p["min_map"])
        norms = channel_norms(model, clean, ctx.device, p["statistic"], layer)
        z = robust_z(norms)
        pruned = self.select(z)
        if layer == "features":  # the model's own channel mask: stays through the fine-tune
            with torch.no_grad():
                model.feature_mask[pruned] = 0.0
            keep_pruned = None
        else:  # a batch-norm neuron: scale and shift to 0 (its ReLU output is then 0), kept there while fine-tuning
            bn = _bn(model, layer)

            def keep_pruned():
                with torch.no_grad():
                    bn.weight[pruned] = 0.0
                    bn.bias[pruned] = 0.0
            keep_pruned()
        recipe = Recipe(epochs=p["finetune_epochs"], lr=p["lr"], batch_size=p["batch_size"])
        ctx.train(model, clean, recipe, desc="linf-pruning finetune", after_step=keep_pruned)
        return DefenseOutput(
            model=model,
            model_score=float(z.max()),
            info={"layer": "last feature map" if layer == "features" else layer, "channels": len(z),
                  "map": list(size) if size else None, "pruned": pruned,
                  "pruned_z": [round(float(z[c]), 3) for c in pruned], "statistic": p["statistic"],
                  "scored": [round(float(v), 4) for v in norms]},  # per channel: the mean norm that was scored
        )
