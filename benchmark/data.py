"""Image data: any source decoded once into uint8 NCHW tensors, cached on disk as safetensors.

Sources are `datasets` repositories (a Hub id pinned by revision, or a local folder laid out
the same way) and scikit-learn's bundled digits (the embedded, offline default). Every image
is converted to the scenario's channel count and resized to its square size at decode time,
so training and evaluation only ever index tensors.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from . import atomic, derive
from .config import to_dict
from .errors import BenchError
from .scenario import DataSpec, ImageSpec

CACHE_FORMAT = 1


@dataclass
class ImageSet:
    """A labelled image set held as tensors: `images` uint8 (N, C, H, W), `labels` int64 (N,)."""
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError("images must be a uint8 tensor (N, C, H, W)")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index) -> "ImageSet":
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(self.images[index].clone(), self.labels[index].clone(), list(self.classes))

    def batches(self, batch_size: int, device="cpu"):
        """Yield (x float in [0,1] on device, y) in order."""
        for i in range(0, len(self), batch_size):
            yield to_float(self.images[i:i + batch_size], device), self.labels[i:i + batch_size].to(device)


def to_float(images_u8: torch.Tensor, device="cpu") -> torch.Tensor:
    return images_u8.to(device, non_blocking=True).float().div_(255.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def split(n_or_labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified split of indices 0..N-1 by label: returns (rest, held_out) with ~fraction held out
    of every class (at least one per class that has two or more samples)."""
    labels = n_or_labels
    g = torch.Generator().manual_seed(seed)
    held, rest = [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        held.append(idx[:k])
        rest.append(idx[k:])
    return torch.sort(torch.cat(rest)).values, torch.sort(torch.cat(held)).values


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8)


def _channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if channels == 3 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and x.shape[1] == 3:  # ITU-R 601 luma, as PIL's convert("L")
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise BenchError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")


def _digits(spec: DataSpec):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, te = train_test_split(np.arange(len(y)), test_size=spec.test_fraction, random_state=0, stratify=d.target)
    names = [str(c) for c in d.target_names]
    return (x[tr], y[tr]), (x[te], y[te]), names


def _decode_split(ds, spec: DataSpec, image: ImageSpec, where: str):
    from PIL import Image

    for col in (spec.image_column, spec.label_column):
        if col not in ds.column_names:
            raise BenchError(f"{where}: column '{col}' not found; columns are {ds.column_names}. "
                             f"Set image_column/label_column in the scenario.")
    mode = "L" if image.channels == 1 else "RGB"
    out = np.empty((len(ds), image.size, image.size, image.channels), dtype=np.uint8)
    from tqdm.auto import tqdm
    for i, im in enumerate(tqdm(ds[spec.image_column], desc=f"decode {where}", leave=False, mininterval=2)):
        im = im.convert(mode)
        if im.size != (image.size, image.size):
            im = im.resize((image.size, image.size), Image.BILINEAR)
        out[i] = np.asarray(im).reshape(image.size, image.size, image.channels)
    x = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    y = torch.as_tensor(np.asarray(ds[spec.label_column]), dtype=torch.long)
    return x, y


def _hf(spec: DataSpec, image: ImageSpec, base_dir: Path):
    import datasets

    if spec.source == "hub":
        where, args = f"{spec.id}@{spec.revision}", dict(path=spec.id, revision=spec.revision)
    elif spec.source == "derived":
        folder = derive.folder(base_dir, spec.name)
        where, args = str(folder), dict(path=str(folder))
    else:
        folder = (base_dir / Path(spec.path).expanduser()).resolve()
        if not folder.exists():
            raise BenchError(f"local dataset folder {folder} does not exist (scenario key data.path)")
        where, args = str(folder), dict(path=str(folder))
    try:
        dd = datasets.load_dataset(**args)
    except Exception as e:  # the datasets library raises many types; name the source
        raise BenchError(f"could not load dataset {where}: {type(e).__name__}: {e}") from e
    out = []
    for split_name in (spec.train_split, spec.test_split):
        if split_name not in dd:
            raise BenchError(f"dataset {where} has no split '{split_name}' (has {list(dd)}); "
                             f"set train_split/test_split in the scenario")
        out.append(_decode_split(dd[split_name], spec, image, f"{where}:{split_name}"))
    feat = dd[spec.train_split].features.get(spec.label_column)
    names = list(getattr(feat, "names", None)
                 or [str(i) for i in range(int(max(out[0][1].max(), out[1][1].max())) + 1)])
    return out[0], out[1], names


def _select(x, y, names, classes):
    if classes is None:
        return x, y, names
    keep = torch.isin(y, torch.tensor(classes))
    remap = torch.full((int(max(max(classes), int(y.max()))) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    return x[keep], remap[y[keep]], [names[c] for c in classes]


def per_class(labels: torch.Tensor, k: int | None) -> torch.Tensor:
    """Indices (ascending) of at most k images of each class: a fixed draw (seed 0), so every scenario that asks
    for k images per class of a dataset (with the same `classes`) trains on the same images, and a larger k keeps a
    smaller k's."""
    if k is None or len(labels) == 0:
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=g)
    keep = [order[labels[order] == c][:k] for c in torch.unique(labels)]
    return torch.sort(torch.cat(keep)).values


def load(spec: DataSpec, image: ImageSpec, cache_dir: Path, base_dir: Path | None = None) -> tuple[ImageSet, ImageSet]:
    """Return (train, test) image sets, decoding once and reusing the on-disk cache after that."""
    ident = {"format": CACHE_FORMAT, "data": to_dict(spec), "image": to_dict(image)}
    if spec.source == "local":
        ident["folder"] = str((Path(base_dir or ".") / Path(spec.path).expanduser()).resolve())
    if spec.source == "derived":  # checked against its pin; the cache follows its content
        ident["content"] = derive.manifest(Path(cache_dir).parent, spec.name)["content_sha256"]
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.exists():
        t = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        names = meta["classes"]
    else:
        if spec.source == "sklearn-digits":
            (xtr, ytr), (xte, yte), names = _digits(spec)
        else:
            where = Path(cache_dir).parent if spec.source == "derived" else Path(base_dir or ".")
            (xtr, ytr), (xte, yte), names = _hf(spec, image, where)
        xtr, ytr, names_sel = _select(xtr, ytr, names, spec.classes)
        xte, yte, _ = _select(xte, yte, names, spec.classes)
        names = names_sel
        keep_tr, keep_te = per_class(ytr, spec.train_per_class), per_class(yte, spec.test_per_class)
        xtr, ytr, xte, yte = xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]
        t = {"train_x": _resize(_channels(xtr, image.channels), image.size), "train_y": ytr,
             "test_x": _resize(_channels(xte, image.channels), image.size), "test_y": yte}
        # the names first, then the tensors: a reader that finds the tensors finds their names (atomic.py)
        atomic.write_text(path.with_suffix(".json"), json.dumps({**ident, "classes": names}, indent=1))
        with atomic.replacing(path) as tmp:
            save_file({k: v.contiguous() for k, v in t.items()}, str(tmp))
    return (ImageSet(t["train_x"], t["train_y"], names), ImageSet(t["test_x"], t["test_y"], names))
