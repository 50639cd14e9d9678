"""Data sources decode once into uint8 tensors, through `datasets` for Hub-layout folders."""
import shutil

import numpy as np
import pytest
import torch

from benchmark.data import load, split
from benchmark.errors import BenchError
from benchmark.scenario import DataSpec, ImageSpec

from .conftest import SHARED


def make_hf_folder(folder, n_train=12, n_test=6, size=16, mode="RGB"):
    """A dataset laid out as a Hub dataset repository: data/{split}-00000-of-00001.parquet."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "eel"])})
    for split_name, n in (("train", n_train), ("test", n_test)):
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        images = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for _ in range(n)]
        ds = datasets.Dataset.from_dict({"img": images, "label": [i % 3 for i in range(n)]}, features=feats)
        (folder / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(folder / "data" / f"{split_name}-00000-of-00001.parquet"))
    return folder


def test_digits_subset_is_relabelled(tmp_path):
    tr, te = load(DataSpec(source="sklearn-digits", classes=[5, 6, 7, 8, 9]), ImageSpec(size=32, channels=1), tmp_path)
    assert tr.images.shape[1:] == (1, 32, 32) and tr.images.dtype == torch.uint8
    assert tr.classes == ["5", "6", "7", "8", "9"] and set(tr.labels.tolist()) == set(range(5))
    assert int(tr.images.max()) == 255 and int(tr.images.min()) == 0
    assert 0.2 < len(te) / (len(tr) + len(te)) < 0.3


def test_local_folder_through_datasets_is_cached(tmp_path):
    src = make_hf_folder(tmp_path / "repo")
    spec = DataSpec(source="local", path=str(src), image_column="img")
    tr, te = load(spec, ImageSpec(size=8, channels=3), tmp_path / "cache")
    assert tr.images.shape == (12, 3, 8, 8) and len(te) == 6
    assert tr.classes == ["cat", "dog", "eel"] and tr.labels.tolist()[:4] == [0, 1, 2, 0]
    shutil.rmtree(src)  # the cache alone serves the second load
    tr2, _ = load(spec, ImageSpec(size=8, channels=3), tmp_path / "cache")
    assert torch.equal(tr.images, tr2.images)


def test_grey_and_colour_conversion(tmp_path):
    src = make_hf_folder(tmp_path / "grey", mode="L")
    tr, _ = load(DataSpec(source="local", path=str(src), image_column="img"), ImageSpec(size=16, channels=3), tmp_path)
    assert tr.images.shape[1] == 3 and torch.equal(tr.images[:, 0], tr.images[:, 2])


def test_missing_column_and_folder_are_clear_errors(tmp_path):
    src = make_hf_folder(tmp_path / "repo")
    with pytest.raises(BenchError, match="column 'image' not found.*image_column"):
        load(DataSpec(source="local", path=str(src)), ImageSpec(size=8), tmp_path / "c1")
    with pytest.raises(BenchError, match="does not exist"):
        load(DataSpec(source="local", path=str(tmp_path / "nowhere")), ImageSpec(size=8), tmp_path / "c2")


def test_stratified_split():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    rest, held = split(labels, 0.1, seed=0)
    assert len(set(rest.tolist()) & set(held.tolist())) == 0 and len(rest) + len(held) == 100
    assert torch.bincount(labels[held]).tolist() == [5, 3, 2]
    assert torch.equal(split(labels, 0.1, seed=0)[1], held) and not torch.equal(split(labels, 0.1, seed=1)[1], held)


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "chest-xray-pneumonia").is_dir(), reason="../shared/datasets not present")
def test_shared_chest_xray_loads(tmp_path):
    tr, te = load(DataSpec(source="local", path=str(SHARED / "chest-xray-pneumonia")), ImageSpec(size=32, channels=3),
                  tmp_path)
    assert tr.num_classes == 2 and len(tr) == 4167 and len(te) == 1049
    assert tr.images.shape[1:] == (3, 32, 32)
    assert 0.2 < float((tr.labels == 0).float().mean()) < 0.32  # ~26% NORMAL


def test_per_class_keeps_a_fixed_nested_draw_of_each_class(tmp_path):
    from benchmark.data import per_class
    from benchmark.plan import sizes

    labels = torch.tensor([0, 1, 2] * 10 + [2] * 5)  # class 2 has 15 images
    two, four = per_class(labels, 2), per_class(labels, 4)
    assert torch.equal(torch.bincount(labels[two]), torch.tensor([2, 2, 2]))
    assert set(two.tolist()) <= set(four.tolist())  # a larger k keeps a smaller k's images
    assert torch.equal(per_class(labels, 2), two) and torch.equal(per_class(labels, None), torch.arange(35))
    assert torch.equal(two, torch.sort(two).values)

    src = make_hf_folder(tmp_path / "repo", n_train=12, n_test=9)
    spec = DataSpec(source="local", path=str(src), image_column="img", train_per_class=3, test_per_class=1)
    full, _ = load(DataSpec(source="local", path=str(src), image_column="img"), ImageSpec(size=8), tmp_path / "c1")
    tr, te = load(spec, ImageSpec(size=8), tmp_path / "c2")
    assert len(tr) == 9 and torch.equal(torch.bincount(tr.labels), torch.tensor([3, 3, 3])) and len(te) == 3
    assert torch.equal(tr.images, full.images[per_class(full.labels, 3)])  # the same images, not resampled
    assert sizes(spec, tmp_path) == (9, 3)  # `bdbench plan` counts what the run will train on
