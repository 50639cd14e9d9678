"""Spectral Signatures (Tran, Li, Madry 2018): poisoned samples stand out along the top singular direction."""
import torch

from benchmark.api import Defense, DefenseOutput, embeddings


def spectral_scores(r: torch.Tensor) -> torch.Tensor:
    """((R_i - mean(R)) . v)^2 with v the top right singular vector of the CENTRED matrix R - mean(R)."""
    m = r.double() - r.double().mean(0, keepdim=True)
    v = torch.linalg.svd(m, full_matrices=False).Vh[0]
    return (m @ v) ** 2


class SpectralSignatures(Defense):
    position = "data"

    def inspect(self, model, train, ctx):
        r = embeddings(model, train, device=ctx.device)
        score = torch.zeros(len(train), dtype=torch.float64)
        flags = torch.zeros(len(train), dtype=torch.bool)
        removed = {}
        for c in range(train.num_classes):
            idx = torch.nonzero(train.labels == c).flatten()
            if len(idx) < 2:
                continue
            s = spectral_scores(r[idx])
            score[idx] = s
            k = min(len(idx), int(1.5 * self.params["eps"] * len(idx)))
            flags[idx[torch.argsort(s, descending=True)[:k]]] = True
            removed[train.classes[c]] = k
        return DefenseOutput(sample_scores=score, sample_flags=flags,
                             info={"representation": "penultimate (pooled features)", "removed_per_class": removed})
