"""Activation Clustering (Chen et al. 2018): per label, 2-means on reduced activations; the smaller cluster of a
label that splits well (silhouette) is poison."""
import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.metrics import silhouette_score

from benchmark.api import Defense, DefenseOutput, embeddings



class ActivationClustering(Defense):
    position = "data"

    def reduce(self, a: np.ndarray, seed: int) -> np.ndarray:
        k = min(self.params["dims"], a.shape[1], len(a) - 1)
        if self.params["reducer"] == "pca":
            return PCA(k, random_state=seed).fit_transform(a)
        return FastICA(k, random_state=seed, max_iter=1000, tol=1e-3, whiten="unit-variance").fit_transform(a)

    def inspect(self, model, train, ctx):
        r = embeddings(model, train, device=ctx.device).numpy().astype(np.float64)
        score = np.zeros(len(train))
        flags = np.zeros(len(train), dtype=bool)
        per_label = {}
        for c in range(train.num_classes):
            idx = np.nonzero(train.labels.numpy() == c)[0]
            if len(idx) < 4:
                continue
            z = self.reduce(r[idx], ctx.seed)
            km = KMeans(2, n_init=10, random_state=ctx.seed).fit(z)
            sizes = np.bincount(km.labels_, minlength=2)
            small = int(sizes.argmin())
            rel = sizes.min() / len(idx)
            # the paper's two cluster analyses: relative size (the poison is the SMALLER cluster, flagged when its
            # share is below size_threshold) and the silhouette score (how well two clusters fit the label: high
            # for a poisoned label, where poison and clean activations separate)
            sil = float(silhouette_score(z, km.labels_, sample_size=min(len(idx), 2000), random_state=ctx.seed))
            a, b = km.cluster_centers_[1 - small], km.cluster_centers_[small]
            proj = (z - (a + b) / 2) @ ((b - a) / max(np.linalg.norm(b - a), 1e-12))
            # continuous score: the sample's position towards the smaller cluster (in units of its spread within the
            # label), weighted by the label's silhouette, so samples ranked high sit in the small cluster of a label
            # that splits cleanly in two
            score[idx] = max(sil, 0.0) * proj / max(proj.std(), 1e-12)
            flagged = bool(rel < self.params["size_threshold"])
            if flagged:
                flags[idx[km.labels_ == small]] = True
            per_label[train.classes[c]] = {"smaller_cluster": round(float(rel), 4), "silhouette": round(sil, 4),
                                           "flagged": flagged}
        return DefenseOutput(sample_scores=torch.from_numpy(score), sample_flags=torch.from_numpy(flags),
                             info={"per_label": per_label, "reducer": self.params["reducer"]})
