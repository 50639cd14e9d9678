"""Derived datasets: the subsets a paper used, drawn from public data by one command, checkable by a content hash.

    bdbench data derive matsuo-lfw-bush            # reads the named public source, writes <workdir>/derived/NAME
    bdbench data derive matsuo-aider --source DIR  # a source the user downloads (or a local copy of a Hub one)

A derivation names its source (a Hub dataset id at a revision, or where to download it), its classes, how a source
row gets its label, and how each output split is drawn: per class (or per group, e.g. per person), `take` images, of
which the last `test` go to the test split, choosing by the sha256 of the image bytes (so the choice does not depend
on the order in which the source delivers its rows), or the first ones in the source's order (`order="source"`, for
sources too large to read whole; the source's revision fixes the order). Images are copied byte for byte, never
re-encoded. The output folder has the Hub layout (`data/{train,test}-00000-of-00001.parquet`), which a scenario reads
with `data: {source: derived, name: NAME}`, and a `manifest.json` whose `content_sha256` hashes the class names and,
per split and row, the label and the sha256 of the image bytes (not the parquet files, whose writer metadata varies
between library versions). A derivation that pins `sha256` refuses any other content. Until a derivation is pinned,
deriving it again from a source that changed gives other data under the same scenario settings, which the data cache
notices but the stage keys do not: derive into a fresh --workdir.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import atomic
from .errors import BenchError

FORMAT = 1


@dataclass(frozen=True)
class Draw:
    """From one group of a source split (a class, or e.g. one person): `take` images (an error if it has fewer; all
    if None; "balance": as many as the smallest group has), of which the last `test`, or the last `test_fraction`
    (rounded), in the draw's order go to the test split and the rest to the train split."""
    take: Optional[int | str] = None
    test: Optional[int] = None
    test_fraction: Optional[float] = None

    def n_test(self, n: int) -> int:
        return self.test if self.test is not None else round(n * (self.test_fraction or 0.0))


@dataclass(frozen=True)
class Derivation:
    name: str
    description: str
    classes: tuple[str, ...]
    label: Callable[[dict], Optional[int]]  # a source row -> its class index, None to leave it out
    draws: dict  # source split -> a Draw for every group, or {group: Draw} (groups not named are left out)
    group: Optional[Callable[[dict], object]] = None  # a source row -> its group (default: its class)
    image_column: str = "image"
    id: Optional[str] = None          # a Hub dataset id; None: the user downloads it (`where`) and passes --source
    revision: Optional[str] = None
    where: str = ""
    order: str = "sha256"             # or "source": the first images in the source's order (streamed)
    sha256: Optional[str] = None      # the pinned content hash, once a maintainer has derived it
    paper: str = ""
    columns: tuple[str, ...] = field(default=())  # the source columns the label reads (checked before reading)
    check_names: bool = False         # the source's `label` class names must equal `classes`, in order


REGISTRY: dict[str, Derivation] = {}


def register(d: Derivation) -> Derivation:
    REGISTRY[d.name] = d
    return d


def get(name: str) -> Derivation:
    if name not in REGISTRY:
        raise BenchError(f"no derived dataset {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def folder(workdir: Path, name: str) -> Path:
    return Path(workdir) / "derived" / name


def _image_bytes(value, base: Optional[Path]) -> bytes:
    """The stored bytes of a `datasets` Image value read with decode=False ({'bytes', 'path'})."""
    if isinstance(value, dict) and value.get("bytes") is not None:
        return value["bytes"]
    if isinstance(value, dict) and value.get("path"):
        p = Path(value["path"])
        return (p if p.is_absolute() or base is None else base / p).read_bytes()
    raise BenchError(f"an image value without bytes or a readable path: {type(value).__name__}")


def _rows(d: Derivation, source: Optional[Path], split: str):
    """(row, image bytes) of one source split, streamed, images undecoded."""
    import datasets

    kwargs = dict(path=str(source)) if source is not None else dict(path=d.id, revision=d.revision)
    try:
        ds = datasets.load_dataset(**kwargs, split=split, streaming=True)
    except Exception as e:  # the datasets library raises many types; name the source
        where = source or f"{d.id}@{d.revision}"
        raise BenchError(f"derive {d.name}: could not read split {split!r} of {where}: {type(e).__name__}: {e}") from e
    missing = [c for c in (d.image_column, *d.columns) if ds.column_names is not None and c not in ds.column_names]
    if missing:
        raise BenchError(f"derive {d.name}: the source has no column {', '.join(map(repr, missing))} (it has "
                         f"{ds.column_names}): not the dataset this derivation reads")
    names = getattr((ds.features or {}).get("label"), "names", None)
    if d.check_names and names is not None and list(names) != list(d.classes):
        raise BenchError(f"derive {d.name}: the source's classes are {names}, the derivation's {list(d.classes)} in "
                         f"this order (a stray or renamed folder in a downloaded copy?)")
    ds = ds.cast_column(d.image_column, datasets.Image(decode=False))
    for row in ds:
        yield row, _image_bytes(row[d.image_column], source)


def select(d: Derivation, source: Optional[Path] = None) -> dict[str, list[tuple[int, str, bytes]]]:
    """Output split ("train", "test") -> [(label, image sha256, image bytes)] sorted by (label, sha256). An image
    whose exact bytes recur is kept once: in the first source split of `draws` that has it, and not at all where its
    copies disagree on label or group (which copy came first must not matter)."""
    out: dict[str, list] = {"train": [], "test": []}
    group_of = d.group or d.label
    taken: set[str] = set()  # images of earlier source splits
    for split, plan in d.draws.items():
        picked: dict = {} if isinstance(plan, Draw) else {g: {} for g in plan}
        where: dict[str, set] = {}  # digest -> the (label, group) pairs its copies carry
        for row, data in _rows(d, source, split):
            c, g = d.label(row), group_of(row)
            if c is None or g is None or not (isinstance(plan, Draw) or g in plan):
                continue
            draw = plan if isinstance(plan, Draw) else plan[g]
            if d.order == "source" and isinstance(draw.take, int) and len(picked.get(g, ())) >= draw.take:
                continue  # this group is full: neither hashed nor held
            digest = hashlib.sha256(data).hexdigest()
            if digest in taken:
                continue
            where.setdefault(digest, set()).add((c, g))
            picked.setdefault(g, {})[digest] = (c, digest, data)
            if d.order == "source" and _full(d, plan, picked):
                break  # every group full: a streamed source need not be read to its end
        clash = {h for h, labels in where.items() if len(labels) > 1}
        picked = {g: [r for h, r in rows.items() if h not in clash] for g, rows in picked.items()}
        smallest = min((len(rows) for rows in picked.values()), default=0)
        for g, rows in sorted(picked.items(), key=lambda kv: str(kv[0])):
            draw = plan if isinstance(plan, Draw) else plan[g]
            if d.order == "sha256":
                rows.sort(key=lambda r: r[1])
            take = smallest if draw.take == "balance" else draw.take
            if take is not None and len(rows) < take:
                raise BenchError(f"derive {d.name}: {g!r} has {len(rows)} images in split {split!r}, the derivation "
                                 f"takes {take}")
            rows = rows[:take] if take is not None else rows
            n_test = draw.n_test(len(rows))
            if not 0 <= n_test <= len(rows):
                raise BenchError(f"derive {d.name}: {g!r} has {len(rows)} images in split {split!r}, the derivation "
                                 f"holds out {n_test} for test")
            out["train"].extend(rows[:len(rows) - n_test])
            out["test"].extend(rows[len(rows) - n_test:])
        taken |= set(where)
    return {k: sorted(v, key=lambda r: (r[0], r[1])) for k, v in out.items() if v}


def _full(d: Derivation, plan, picked: dict) -> bool:
    if isinstance(plan, Draw):
        return (d.group is None and isinstance(plan.take, int) and len(picked) == len(d.classes)
                and all(len(v) >= plan.take for v in picked.values()))
    return all(isinstance(draw.take, int) and len(picked[g]) >= draw.take for g, draw in plan.items())


def content_sha256(classes, splits: dict[str, list]) -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT, "classes": list(classes)}).encode())
    for split in sorted(splits):
        for label, digest, _ in splits[split]:
            h.update(f"{split}\t{label}\t{digest}\n".encode())
    return h.hexdigest()


def derive(name: str, workdir: Path, source: Optional[Path] = None, log=print) -> dict:
    """Draw `name` from its source into <workdir>/derived/<name>; return its manifest. A pinned content hash that
    differs is an error, and the folder is not replaced."""
    import datasets

    d = get(name)
    if d.id is None and source is None:
        raise BenchError(f"derive {name}: its source is not on the Hub; download it ({d.where}) and pass --source DIR")
    splits = select(d, Path(source).resolve() if source is not None else None)
    digest = content_sha256(d.classes, splits)
    if d.sha256 is not None and digest != d.sha256:
        raise BenchError(f"derive {name}: the content hash is {digest}, not the pinned {d.sha256}: the source "
                         f"differs from the one the derivation was made from ({source or f'{d.id}@{d.revision}'})")
    out = folder(workdir, name)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(d.classes))})
    for split, rows in splits.items():
        ds = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for _, _, b in rows],
                                         "label": [c for c, _, _ in rows]}, features=feats)
        ds.to_parquet(str(tmp / "data" / f"{split}-00000-of-00001.parquet"))
    manifest = {"format": FORMAT, "name": name, "content_sha256": digest, "classes": list(d.classes),
                "source": {"id": d.id, "revision": d.revision} if source is None else {"folder": str(source)},
                "counts": {s: [sum(1 for r in rows if r[0] == c) for c in range(len(d.classes))]
                           for s, rows in splits.items()}}
    atomic.write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)  # set aside, not deleted, until the new folder is in place
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    log(f"derived {name} into {out}: " + ", ".join(f"{s} {sum(c)}" for s, c in manifest["counts"].items())
        + f"; content sha256 {digest}" + ("" if d.sha256 else " (not pinned: pin it in benchmark/derive.py)"))
    return manifest


def manifest(workdir: Path, name: str) -> dict:
    """The manifest of a derived folder, checked against the derivation's pin; an error says how to derive it."""
    d = get(name)
    path = folder(workdir, name) / "manifest.json"
    if not path.is_file():
        raise BenchError(f"derived dataset {name!r} is not at {path.parent}: run `bdbench data derive {name}"
                         + (" --source DIR`" if d.id is None else "`") + " once (with the same --workdir)")
    m = json.loads(path.read_text())
    if d.sha256 is not None and m.get("content_sha256") != d.sha256:
        raise BenchError(f"derived dataset {name!r} at {path.parent} has content {m.get('content_sha256')}, not the "
                         f"pinned {d.sha256}: derive it again")
    return m


# ---------------------------------------------------------------- the seed paper's data (Matsuo & Takemoto 2022)
# Their code (github.com/YukiM00/Backdoored-ImageNet, utils/data.py) draws each subset at random; these take the
# same classes and counts and choose by image hash instead, so anyone can rebuild them.

MATSUO = "Matsuo & Takemoto 2022, Appl. Sci. 12:12564; counts from their utils/data.py"

LFW_OTHERS = {"Ariel_Sharon": 48, "Colin_Powell": 49, "Donald_Rumsfeld": 48, "Gerhard_Schroeder": 48,
              "Hugo_Chavez": 48, "Jacques_Chirac": 48, "Jean_Chretien": 48, "John_Ashcroft": 48,
              "Junichiro_Koizumi": 48, "Serena_Williams": 48, "Tony_Blair": 49}


def _lfw_identity(row) -> str:
    return Path(str(row["filename"])).stem.rsplit("_", 1)[0]


register(Derivation(
    name="matsuo-lfw-bush", paper=MATSUO, id="bitmind/lfw", revision="main", columns=("filename",),
    description="LFW faces: George W. Bush (530 images, 110 for test) vs 11 other frequent identities (48 or 49 "
                "images each, 10 of each for test)",
    classes=("others", "George_W_Bush"),
    label=lambda row: 1 if _lfw_identity(row) == "George_W_Bush" else 0,
    group=_lfw_identity,
    draws={"train": {"George_W_Bush": Draw(test=110),  # all of his (530 in LFW)
                     **{who: Draw(take=n, test=10) for who, n in LFW_OTHERS.items()}}}))


def _utk_age(row) -> Optional[int]:
    return None if row["age"] is None else int(row["age"])


register(Derivation(
    name="matsuo-utkface", paper=MATSUO, id="nu-delta/utkface", revision="main", columns=("age",),
    description="UTKFace faces: minor (age 7-17) vs adult (18 and over), as many adults as minors, 20% of each "
                "held out (the paper's own lists are in its repository: data/subdata/UTKface_data_*.csv)",
    classes=("minor", "adult"),
    label=lambda row: (None if (a := _utk_age(row)) is None or a < 7 else 0 if a <= 17 else 1),
    draws={"train": Draw(take="balance", test_fraction=0.2)}))

register(Derivation(
    name="matsuo-chest-xray", paper=MATSUO, id="hf-vision/chest-xray-pneumonia",
    revision="c1a67c18df1a52ec332ffc00418f4eaa61a9f2bc", columns=("label",),
    description="Kermany chest X-rays, NORMAL vs PNEUMONIA, balanced: 900 + 270 per class from the train split",
    classes=("NORMAL", "PNEUMONIA"), label=lambda row: int(row["label"]), check_names=True,
    draws={"train": Draw(take=1170, test=270)}))

register(Derivation(
    name="matsuo-aider", paper=MATSUO, where="https://zenodo.org/records/3888300 (AIDER.zip, unpacked: one folder "
                                           "per class)", columns=("label",),
    description="AIDER aerial emergency images, 5 classes; per class the paper's test counts held out",
    classes=("collapsed_building", "fire", "flooded_areas", "normal", "traffic_incident"),
    label=lambda row: int(row["label"]), check_names=True,
    draws={"train": {0: Draw(test=145), 1: Draw(test=150), 2: Draw(test=150), 3: Draw(test=1540),
                     4: Draw(test=140)}}))  # the classes are the folders in sorted order, as in the paper's code

register(Derivation(
    name="imagenet-100pc", paper=MATSUO, id="benjamin-paine/imagenet-1k-256x256", revision="main",
    columns=("label",), order="source",
    description="ImageNet-1k: the first 100 training images of each class in the source's order (100,000), and "
                "the whole validation split (50 per class) as the test set",
    classes=tuple(str(i) for i in range(1000)), label=lambda row: int(row["label"]),
    draws={"train": Draw(take=100), "validation": Draw(test_fraction=1.0)}))
