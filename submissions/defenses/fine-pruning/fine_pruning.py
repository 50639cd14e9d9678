"""Fine-Pruning (Liu et al. 2018): prune dormant last-layer channels, then fine-tune."""
import torch

from benchmark.api import Defense, DefenseOutput, Recipe, split


def mean_activation(model, data, device, batch_size=256) -> torch.Tensor:
    """Mean over inputs and positions of each channel of the last feature map: (C,)."""
    total, n = None, 0
    model.to(device).eval()
    with torch.inference_mode():
        for x, _ in data.batches(batch_size, device):
            f = model.features(x).float()
            a = f.mean((2, 3)) if f.ndim == 4 else f.mean(1)
            total = a.sum(0) if total is None else total + a.sum(0)
            n += len(x)
    return (total / n).cpu()


def accuracy(model, data, device) -> float:
    with torch.inference_mode():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.batches(512, device))
    return correct / max(1, len(data))


class FinePruning(Defense):
    def prune(self, model, prune_set, holdout, device):
        order = torch.argsort(mean_activation(model, prune_set, device), stable=True).tolist()
        base = accuracy(model, holdout, device)
        limit = int(self.params["max_ratio"] * len(order))
        pruned, history = [], []
        for c in order[:limit]:
            with torch.no_grad():
                model.feature_mask[c] = 0.0
            acc = accuracy(model, holdout, device)
            if base - acc > self.params["max_acc_drop"]:
                with torch.no_grad():
                    model.feature_mask[c] = 1.0
                break
            pruned.append(c)
            history.append(acc)
        return pruned, base, history

    def run(self, model, clean, ctx):
        p = self.params
        keep, held = split(clean.labels, p["holdout"], ctx.seed)
        pruned, base, history = self.prune(model, clean.subset(keep), clean.subset(held), ctx.device)
        ctx.train(model, clean, Recipe(epochs=p["finetune_epochs"], lr=p["lr"], batch_size=p["batch_size"]),
                  desc="fine-pruning finetune")
        return DefenseOutput(model=model, info={
            "channels": int(model.feature_mask.numel()), "pruned": pruned, "holdout_accuracy_before": base,
            "holdout_accuracy_after_pruning": history[-1] if history else base, "holdout_size": len(held)})
