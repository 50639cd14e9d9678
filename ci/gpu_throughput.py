"""Images per second of the harness's own training and evaluation loops (benchmark.training) at the GPU tier's shape:
timm resnet50 at 224 px, on random uint8 images (throughput does not depend on the pixels).

    python ci/gpu_throughput.py [DEVICE] [N]      # DEVICE auto|cuda|cpu (default auto), N images (default 2048)

Prints training images/s at batch 32 (the seed paper's) and 128, and evaluation images/s at batch 512, each with
the TFLOP/s it implies (training counted as 3 x the forward FLOPs that `bdbench plan` counts). `bdbench plan`'s
default --tflops is the batch-32 figure measured with this script on one H200.
"""
import sys
import time

import torch

from benchmark import device as dev
from benchmark import training
from benchmark.data import ImageSet
from benchmark.models import Classifier
from benchmark.plan import gflops
from benchmark.scenario import Recipe


def _sync(d: torch.device) -> None:
    if d.type == "cuda":
        torch.cuda.synchronize()


def main(device: str = "auto", n: int = 2048, arch: str = "resnet50", size: int = 224) -> None:
    d = dev.pick(device)
    g = gflops(arch, size, 3, 5)
    data = ImageSet(torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8), torch.randint(0, 5, (n,)),
                    list("abcde"))
    warm = ImageSet(data.images[:256], data.labels[:256], data.classes)
    for bs in (32, 128):
        model = Classifier(arch, 5, 3)
        recipe = Recipe(epochs=1, lr=1e-3, batch_size=bs, schedule="constant", weight_decay=0.0)
        training.fit(model, warm, recipe, device=d, seed=0, progress=False)  # warm-up: kernels, allocator
        _sync(d)
        t = time.perf_counter()
        training.fit(model, data, recipe, device=d, seed=0, progress=False)
        _sync(d)
        s = time.perf_counter() - t
        print(f"{dev.describe(d)} {arch}@{size} train batch {bs}: {n / s:.0f} img/s, {3 * g * n / s / 1e3:.1f} TFLOP/s")
    training.logits(model, warm, device=d)
    t = time.perf_counter()
    training.logits(model, data, device=d)  # returns CPU tensors: synchronised
    s = time.perf_counter() - t
    print(f"{dev.describe(d)} {arch}@{size} eval batch 512: {n / s:.0f} img/s, {g * n / s / 1e3:.1f} TFLOP/s")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["auto"]), *[int(a) for a in sys.argv[2:3]])
