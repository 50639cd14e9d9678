import textwrap
from pathlib import Path

import pytest
import torch

from benchmark.data import ImageSet
from benchmark.registry import Registry

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets"

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def registry():
    return Registry([REPO / "submissions"], entry_points=False)


def random_images(n=40, c=3, size=32, classes=4, seed=0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % classes
    return ImageSet(x, y, [f"c{i}" for i in range(classes)])


def write_submission(root: Path, kind: str, name: str, code: str, params: dict | None = None, manifest: str | None = None):
    folder = root / f"{kind}s" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.py").write_text(textwrap.dedent(code))
    import yaml
    (folder / "submission.yaml").write_text(manifest if manifest is not None else yaml.safe_dump({
        "name": name, "kind": kind, "entry": "plugin:Plugin", "paper": "test", "authors": ["test"],
        "licence": "Apache-2.0", "parameters": params or {}}))
    return folder
