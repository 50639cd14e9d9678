"""Derived datasets (benchmark/derive.py): the paper's subsets drawn from public data, checked on small local
datasets with the public sources' schemas; the same content for everyone, whatever order the source has."""
import io
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from benchmark import derive
from benchmark.data import load
from benchmark.errors import BenchError, ConfigError
from benchmark.scenario import DataSpec, ImageSpec


def png(seed: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def hub_folder(folder, splits: dict, features: dict):
    """A dataset in the Hub layout (data/{split}-00000-of-00001.parquet), rows given as dicts with image bytes."""
    import datasets
    feats = datasets.Features({"image": datasets.Image(), **features})
    for split, rows in splits.items():
        cols = {k: [r[k] for r in rows] for k in ("image", *features)}
        cols["image"] = [{"bytes": b, "path": None} for b in cols["image"]]
        (folder / "data").mkdir(parents=True, exist_ok=True)
        out = folder / "data" / f"{split}-00000-of-00001.parquet"
        datasets.Dataset.from_dict(cols, features=feats).to_parquet(str(out))
    return folder


def lfw_rows(shuffle_seed=None):
    """bitmind/lfw's schema: image + filename (Person_Name_0001.jpg)."""
    people = {"George_W_Bush": 530, **{k: 49 for k in derive.LFW_OTHERS}, "Someone_Else": 60}
    rows, seed = [], 0
    for who, n in people.items():
        for i in range(n):
            seed += 1
            rows.append({"image": png(seed), "filename": f"{who}_{i + 1:04d}.jpg"})
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def lfw(tmp_path_factory):
    import datasets
    base = tmp_path_factory.mktemp("lfw")
    rows = lfw_rows()
    a = hub_folder(base / "a", {"train": rows}, {"filename": datasets.Value("string")})
    b = hub_folder(base / "b", {"train": lfw_rows(shuffle_seed=1)}, {"filename": datasets.Value("string")})
    return a, b


def test_lfw_is_bush_against_the_papers_eleven_with_their_counts(lfw, tmp_path):
    m = derive.derive("matsuo-lfw-bush", tmp_path, source=lfw[0], log=lambda s: None)
    assert m["classes"] == ["others", "George_W_Bush"]
    # Bush: 530 images, 110 for test; the 11 others: 48 or 49 each (530 in all), 10 of each for test
    assert m["counts"] == {"train": [sum(derive.LFW_OTHERS.values()) - 110, 420], "test": [110, 110]}
    tr, te = load(DataSpec(source="derived", name="matsuo-lfw-bush"), ImageSpec(size=8), tmp_path / "data")
    assert tr.classes == ["others", "George_W_Bush"] and len(tr) == 420 + 420 and len(te) == 220


def test_the_content_does_not_depend_on_the_sources_order_and_is_byte_for_byte(lfw, tmp_path):
    one = derive.derive("matsuo-lfw-bush", tmp_path / "one", source=lfw[0], log=lambda s: None)
    two = derive.derive("matsuo-lfw-bush", tmp_path / "two", source=lfw[1], log=lambda s: None)
    assert one["content_sha256"] == two["content_sha256"]
    import pyarrow.parquet as pq
    f = "data/train-00000-of-00001.parquet"
    a, b = (pq.read_table(p / "derived/matsuo-lfw-bush" / f) for p in (tmp_path / "one", tmp_path / "two"))
    assert a.column("label").to_pylist() == b.column("label").to_pylist()
    assert [r["bytes"] for r in a.column("image").to_pylist()] == [r["bytes"] for r in b.column("image").to_pylist()]
    assert {r["bytes"] for r in a.column("image").to_pylist()} <= {r["image"] for r in lfw_rows()}  # not re-encoded


def test_utkface_balances_minors_and_adults_and_holds_out_a_fifth(tmp_path):
    import datasets
    ages = [3] * 5 + [7, 12, 17] * 10 + [18, 40, 90, 30, 60] * 10  # 30 minors, 50 adults, 5 under 7
    src = hub_folder(tmp_path / "utk", {"train": [{"image": png(i), "age": a} for i, a in enumerate(ages)]},
                     {"age": datasets.Value("int64")})
    m = derive.derive("matsuo-utkface", tmp_path, source=src, log=lambda s: None)
    assert m["counts"] == {"train": [24, 24], "test": [6, 6]}


def test_a_source_in_its_own_order_takes_the_first_images_of_each_class_and_stops(tmp_path, monkeypatch):
    import hashlib

    import datasets
    rows = [{"image": png(i), "label": i % 3} for i in range(30)]
    held_out = [{"image": png(100 + i), "label": i % 3} for i in range(6)]
    src = hub_folder(tmp_path / "src", {"train": rows, "validation": held_out}, {"label": datasets.Value("int64")})
    d = derive.Derivation(name="tiny-100pc", description="", classes=("a", "b", "c"), label=lambda r: int(r["label"]),
                          order="source",
                          draws={"train": derive.Draw(take=2), "validation": derive.Draw(test_fraction=1.0)})
    monkeypatch.setitem(derive.REGISTRY, d.name, d)
    read = []
    real_rows = derive._rows

    def counted(*a):
        for r in real_rows(*a):
            read.append(a[-1])
            yield r
    monkeypatch.setattr(derive, "_rows", counted)
    splits = derive.select(d, src)
    want = sorted((i % 3, hashlib.sha256(png(i)).hexdigest()) for i in range(6))  # rows 0-5: the first two of each
    assert [(c, h) for c, h, _ in splits["train"]] == want
    assert len(splits["test"]) == 6 and read.count("train") == 6  # it stopped once every class had two


def test_duplicates_are_kept_once_and_dropped_where_their_labels_disagree(tmp_path, monkeypatch):
    import datasets
    rows = [{"image": png(i), "label": i % 2} for i in range(8)]
    rows += [{"image": png(0), "label": 0}, {"image": png(1), "label": 0}]  # png(1) also carries label 1 above
    src = hub_folder(tmp_path / "src", {"train": rows, "test": [{"image": png(2), "label": 0}]},
                     {"label": datasets.Value("int64")})
    d = derive.Derivation(name="dups", description="", classes=("a", "b"), label=lambda r: int(r["label"]),
                          draws={"train": derive.Draw(), "test": derive.Draw(test_fraction=1.0)})
    monkeypatch.setitem(derive.REGISTRY, d.name, d)
    splits = derive.select(d, src)
    assert [c for c, _, _ in splits["train"]] == [0] * 4 + [1] * 3  # png(0) once; png(1) nowhere
    assert "test" not in splits  # png(2) is already in the train split
    backwards = hub_folder(tmp_path / "rev", {"train": rows[::-1], "test": [{"image": png(2), "label": 0}]},
                           {"label": datasets.Value("int64")})
    assert derive.content_sha256(d.classes, derive.select(d, backwards)) == derive.content_sha256(d.classes, splits)


def test_aider_checks_its_class_folders_and_its_test_counts(tmp_path):
    """AIDER comes as one folder per class (datasets' imagefolder); a stray folder or too few images to hold out
    the paper's test counts is an error, not a silently shifted label."""
    from PIL import Image
    names = derive.get("matsuo-aider").classes
    for i, name in enumerate(names):
        (tmp_path / "aider" / name).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(np.full((4, 4, 3), i * 40 + j, dtype=np.uint8)).save(tmp_path / "aider" / name / f"{j}.png")
    with pytest.raises(BenchError, match="holds out 145 for test"):
        derive.derive("matsuo-aider", tmp_path, source=tmp_path / "aider", log=lambda s: None)
    (tmp_path / "aider" / "unsorted").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "aider" / "unsorted" / "x.png")
    with pytest.raises(BenchError, match="the source's classes are"):
        derive.derive("matsuo-aider", tmp_path, source=tmp_path / "aider", log=lambda s: None)


def test_a_pinned_hash_refuses_other_content_and_keeps_the_folder(lfw, tmp_path, monkeypatch):
    derive.derive("matsuo-lfw-bush", tmp_path, source=lfw[0], log=lambda s: None)
    before = (tmp_path / "derived/matsuo-lfw-bush/manifest.json").read_text()
    pinned = derive.Derivation(**{**derive.get("matsuo-lfw-bush").__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(derive.REGISTRY, "matsuo-lfw-bush", pinned)
    with pytest.raises(BenchError, match="not the pinned 0000"):
        derive.derive("matsuo-lfw-bush", tmp_path, source=lfw[0], log=lambda s: None)
    assert (tmp_path / "derived/matsuo-lfw-bush/manifest.json").read_text() == before
    with pytest.raises(BenchError, match="derive it again"):  # a scenario will not read it either
        load(DataSpec(source="derived", name="matsuo-lfw-bush"), ImageSpec(size=8), tmp_path / "data")


def test_scenario_errors_name_the_command_and_the_known_derivations(tmp_path):
    with pytest.raises(BenchError, match="run `bdbench data derive matsuo-utkface` once"):
        load(DataSpec(source="derived", name="matsuo-utkface"), ImageSpec(size=8), tmp_path / "data")
    with pytest.raises(BenchError, match="--source DIR"):
        derive.derive("matsuo-aider", tmp_path)
    import datasets
    src = hub_folder(tmp_path / "other", {"train": [{"image": png(0), "label": 0}]}, {"label": datasets.Value("int64")})
    with pytest.raises(BenchError, match="no column 'filename'.*not the dataset this derivation reads"):
        derive.derive("matsuo-lfw-bush", tmp_path, source=src)
    import yaml

    from benchmark.scenario import load_scenario
    from tests.conftest import REPO
    d = yaml.safe_load((REPO / "benchmark/scenarios/digits.yaml").read_text())
    d["downstream"]["data"] = {"source": "derived", "name": "matsuo-nothing"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError) as e:
        load_scenario(str(tmp_path / "s.yaml"))
    assert e.value.key == "downstream.data.name" and "matsuo-lfw-bush" in str(e.value)


def test_the_cli_derives_into_the_workdir(lfw, tmp_path):
    r = subprocess.run([sys.executable, "-m", "benchmark", "data", "derive", "matsuo-lfw-bush", "--source",
                        str(lfw[0]), "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "derived/matsuo-lfw-bush/manifest.json").read_text())
    assert m["content_sha256"] in r.stdout and "not pinned" in r.stdout
