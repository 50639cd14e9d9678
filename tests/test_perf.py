"""Performance, with pytest-benchmark; skipped in the default run. Run on purpose:

    pytest tests/test_perf.py --benchmark-only

Each test stores its throughput figures in the benchmark's extra_info (shown with --benchmark-json)."""
import math
import time

import pytest
import torch
import torch.nn.functional as F

from benchmark import device as dev
from benchmark import training
from benchmark.data import to_float
from benchmark.models import Classifier
from benchmark.scenario import Recipe

from .conftest import random_images

DEVICE = dev.pick("auto")
N, BS = 1024, 128


def bare_fit(model, images, labels, lr, seed):
    """The same epoch the harness runs, written as a plain PyTorch loop: same permutation, optimiser, schedule."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = len(labels) // BS
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    scaler = dev.grad_scaler(DEVICE)
    model.to(DEVICE).train()
    perm = torch.randperm(len(labels), generator=g)
    for s in range(steps):
        idx = perm[s * BS:(s + 1) * BS]
        x = images[idx].to(DEVICE).float().div_(255)
        y = labels[idx].to(DEVICE)
        with dev.autocast(DEVICE):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def data():
    return random_images(n=N, c=3, size=32, classes=10, seed=0)


def _compare(benchmark, harness, bare, what, rounds=5):
    """Benchmark the harness, time the bare loop the same way; record and return harness speed / bare speed.

    Bare and harness rounds alternate (the bare round runs as the benchmark's untimed setup), and a last bare round
    follows, so a slow spell on a shared machine hits both sides alike; each side keeps its fastest round."""
    t_bare = []

    def time_bare():
        t0 = time.perf_counter()
        bare()
        t_bare.append(time.perf_counter() - t0)
    benchmark.pedantic(harness, setup=time_bare, rounds=rounds, iterations=1)
    time_bare()
    t_harness, t_bare = benchmark.stats.stats.min, min(t_bare)
    ratio = t_bare / t_harness
    benchmark.extra_info.update(harness_img_s=N / t_harness, bare_img_s=N / t_bare, ratio=ratio)
    print(f"\n{what}: harness {N / t_harness:.0f} img/s, bare loop {N / t_bare:.0f} img/s, ratio {ratio:.3f}")
    return ratio


@pytest.mark.parametrize("arch", ["resnet18"])
def test_training_throughput_vs_bare_loop(benchmark, data, arch):
    recipe = Recipe(epochs=1, lr=0.01, batch_size=BS)
    model = Classifier(arch, 10, 3)
    harness = lambda: training.fit(model, data, recipe, device=DEVICE, seed=0, progress=False)  # noqa: E731
    bare = lambda: bare_fit(model, data.images, data.labels, 0.01, 0)  # noqa: E731
    harness(), bare()  # warm-up
    ratio = _compare(benchmark, harness, bare, f"training {arch}")
    assert ratio >= 0.9, f"the harness trains at {ratio:.2f} of a bare loop's speed (goal >= 0.95)"


@pytest.mark.parametrize("arch", ["resnet18"])
def test_evaluation_throughput_vs_bare_loop(benchmark, data, arch):
    model = Classifier(arch, 10, 3).to(DEVICE).eval()

    @torch.inference_mode()
    def bare():
        out = []
        for i in range(0, N, 512):
            with dev.autocast(DEVICE):
                out.append(model(data.images[i:i + 512].to(DEVICE).float().div_(255)).argmax(1).cpu())
        return torch.cat(out)
    harness = lambda: training.predict(model, data, device=DEVICE, batch_size=512)  # noqa: E731
    assert torch.equal(harness(), bare())
    assert _compare(benchmark, harness, bare, f"evaluation {arch}") >= 0.9


ATTACKS = [("badnets", {}), ("blended", {}), ("blended", {"key": "image"}), ("sig", {}), ("wanet", {}),
           ("random-backdoor", {}), ("invisible", {}), ("input-aware", {})]


@pytest.mark.parametrize("name,params", ATTACKS,
                         ids=[f"{n}{'-' + '-'.join(p.values()) if p else ''}" for n, p in ATTACKS])
def test_trigger_throughput(benchmark, registry, name, params):
    attack = registry.create("attack", name, params)
    if name == "input-aware":  # its generators at their shipped width with untrained weights: same cost as trained
        attack._build(3)
    x = to_float(random_images(n=512, c=3, size=32, seed=1).images, DEVICE)
    attack.apply(x)  # warm-up (and any lazily built key)

    def run():
        y = attack.apply(x)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return y
    benchmark(run)
    benchmark.extra_info["img_s"] = 512 / benchmark.stats.stats.mean


def test_adding_one_defense_to_a_finished_grid(benchmark, registry, tmp_path):
    """The grid once without defenses, then the same grid with one defense added: only the defense runs."""
    from pathlib import Path

    from benchmark import grid
    tiny = Path(__file__).parent / "data" / "tiny.yaml"
    kw = dict(home=tmp_path / "home", results=tmp_path / "results", registry=registry, progress=False,
              log=lambda m: None, isolate=False)
    t0 = time.perf_counter()
    base = grid.run(tiny, only={"defenses": [], "attacks": ["badnets"], "seeds": [0]}, **kw)
    t_grid = time.perf_counter() - t0
    added = benchmark.pedantic(lambda: grid.run(tiny, only={"attacks": ["badnets"], "seeds": [0]}, **kw),
                               rounds=1, iterations=1)
    t_add = benchmark.stats.stats.min
    benchmark.extra_info.update(grid_s=t_grid, add_defense_s=t_add, ratio=t_add / t_grid)
    print(f"\ngrid without defenses {t_grid:.1f} s; adding linf-pruning {t_add:.1f} s ({t_add / t_grid:.2f} of it)")
    assert base["computed"] >= 5 and added["computed"] == 2  # the defense and its clean-upstream control


NOOP = """
from benchmark import Defense, DefenseOutput
class Plugin(Defense):
    def run(self, model, clean, ctx):
        return DefenseOutput(model_score=0.0)
"""


@pytest.mark.parametrize("mode", ["process", "sandbox"])
def test_defense_process_start(benchmark, tmp_path, mode):
    """What isolating one defense costs, the defense itself doing nothing: a process forked from the run's fork server
    (its start paid once per run) against a fresh interpreter in a bubblewrap sandbox (imports torch and timm)."""
    from pathlib import Path

    from benchmark.isolation import run_defense
    from benchmark.models import save

    from .conftest import sandbox_or_skip, write_submission
    if mode == "sandbox":
        sandbox_or_skip()
    write_submission(tmp_path / "subs", "defense", "noop", NOOP)
    m = Classifier("test_resnet", 4, 3)
    save(m, tmp_path / "m.safetensors")
    data = random_images(n=64)

    def once():
        return run_defense(roots=[tmp_path / "subs"], name="noop", params={},
                           model_path=Path(tmp_path / "m.safetensors"),
                           config=m.config, data=data, eval_images=None, device=torch.device("cpu"), seed=0,
                           time_limit=300, memory_gb=0, mode=mode)
    once()  # the fork server starts once per run
    out = benchmark.pedantic(once, rounds=3, iterations=1)
    assert out["model_score"] == 0.0
    benchmark.extra_info["seconds_per_defense"] = benchmark.stats.stats.mean
