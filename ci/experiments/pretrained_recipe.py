"""How the pretrained tier's clean upstream was chosen (docs/pretrained-tier.md): ImageNet EfficientNet-Lite0 on
cifar10-20k at 64 px (200 train / 100 test images per class, the tier's upstream data), comparing
  - a linear probe on the frozen features (scikit-learn's logistic regression, the reference),
  - the head alone trained with the harness's SGD (protocol linear) at several learning rates,
  - every layer fine-tuned (protocol full) at several learning rates,
and the largest eigenvalue of the features' second moment, which bounds the head's stable SGD learning rate.

    python ci/experiments/pretrained_recipe.py [--workdir DIR]     # about 15 minutes on 2 cores
"""
import argparse
import time
from pathlib import Path

import torch

from benchmark import data, metrics, models, training, weights
from benchmark.scenario import Recipe, load_scenario

p = argparse.ArgumentParser()
p.add_argument("--workdir", default=str(Path.home() / ".cache/bdbench"))
args = p.parse_args()
store = Path(args.workdir)
sc = load_scenario("pre-imagenet-chest")
train, test = data.load(sc.upstream.data, sc.image, store / "data", sc.base_dir)
cpu = torch.device("cpu")


def fresh():
    torch.manual_seed(0)
    m = models.Classifier(sc.upstream.arch, train.num_classes, sc.image.channels)
    weights.load_into(m, weights.convert(sc, store / "weights"), sc.file)
    return m


from sklearn.linear_model import LogisticRegression  # noqa: E402

f_train, f_test = (training.embeddings(fresh(), d, device=cpu) for d in (train, test))
probe = LogisticRegression(max_iter=2000).fit(f_train.numpy(), train.labels.numpy())
print(f"linear probe (logistic regression): CA {probe.score(f_test.numpy(), test.labels.numpy()):.3f}")
print(f"largest eigenvalue of E[f f^T]: {torch.linalg.eigvalsh(f_train.T @ f_train / len(f_train))[-1]:.0f}")
for protocol, epochs, lrs in (("linear", 10, (0.05, 0.005, 0.001)), ("full", 3, (0.03, 0.003))):
    for lr in lrs:
        m, t = models.set_protocol(fresh(), protocol), time.time()
        training.fit(m, train, Recipe(epochs=epochs, lr=lr, batch_size=32, weight_decay=0.0), device=cpu, seed=0,
                     progress=False)
        ca = metrics.accuracy(training.predict(m, test, device=cpu), test.labels)
        print(f"protocol {protocol}, {epochs} epochs, SGD lr {lr}: CA {ca:.3f} ({time.time() - t:.0f} s)")
