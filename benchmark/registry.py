"""Submissions: discovery, manifests, and creating plugins by name.

A submission is a folder `submissions/{attacks,defenses}/<name>/` holding `submission.yaml`
and the module its `entry` names (`module:Class`, the module a file in that folder).
Installed packages register through the entry-point group `bdbench.plugins`: the entry point
names the class, and its `submission.yaml` lies beside the class's module.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Optional


from .config import Invalid, check_name, parse, read_yaml
from .errors import BenchError, ConfigError, UnknownPluginError
from .params import Param, declare, resolve
from .plugins import Attack, Defense, Plugin

ENTRY_POINT_GROUP = "bdbench.plugins"
REPO_ROOT = Path(__file__).resolve().parent.parent
BASES = {"attack": Attack, "defense": Defense}


@dataclass
class Manifest:
    name: str
    kind: Literal["attack", "defense"]
    entry: str
    paper: str
    authors: list[str]
    licence: str
    parameters: dict[str, Any] = field(default_factory=dict)  # after check(): name -> default
    description: str = ""
    notes: str = ""
    folder: Optional[str] = None  # set on load
    declared: dict[str, Param] = field(default_factory=dict, init=False, repr=False)  # set by check()

    def check(self):
        check_name("name", self.name)
        mod, _, cls = self.entry.partition(":")
        if not mod or not cls:
            raise Invalid("entry", f"must be 'module:Class', got {self.entry!r}")
        if not isinstance(self.parameters, dict):
            raise Invalid("parameters", f"must be a mapping of name to default or declaration, got {self.parameters!r}")
        self.declared = {k: declare(f"parameters.{k}", v) for k, v in self.parameters.items()}
        self.parameters = {k: p.default for k, p in self.declared.items()}


def load_manifest(path: Path) -> Manifest:
    path = Path(path)
    data = read_yaml(path.read_bytes(), path)
    m = parse(Manifest, data, file=path)
    m.folder = str(path.parent)
    return m


def source_hash(folder: Path) -> str:
    """sha256 over a submission's files, so a code change invalidates its cached artifacts."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and p.suffix in (".py", ".yaml", ".yml") and "__pycache__" not in p.parts:
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


class Registry:
    """All known submissions, from folders and entry points. Each root is a folder holding attacks/ and
    defenses/, or a single submission folder."""

    def __init__(self, roots: list[Path] | None = None, entry_points: bool = True):
        if roots is None:
            roots = default_roots()
        self.roots = [Path(r) for r in roots]
        self._manifests: dict[str, dict[str, Manifest]] = {"attack": {}, "defense": {}}
        self._classes: dict[tuple[str, str], type] = {}
        for root in roots:
            if Path(root, "submission.yaml").is_file():  # a single submission folder
                self._add(load_manifest(Path(root, "submission.yaml")))
                continue
            for kind in ("attack", "defense"):
                for yml in sorted(Path(root, f"{kind}s").glob("*/submission.yaml")):
                    self._add(load_manifest(yml), expect_kind=kind)
        if entry_points:
            for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
                self._add_entry_point(ep)

    def _add(self, m: Manifest, expect_kind: str | None = None, cls: type | None = None):
        where = Path(m.folder, "submission.yaml")
        if expect_kind and m.kind != expect_kind:
            raise ConfigError(where, "kind",
                              f"is {m.kind!r} but the folder is under {expect_kind}s/; move it or fix the kind")
        other = self._manifests[m.kind].get(m.name)
        if other is not None and other.folder != m.folder:
            raise BenchError(f"two {m.kind}s are named '{m.name}': {other.folder} and {m.folder}; rename one")
        self._manifests[m.kind][m.name] = m
        if cls is not None:
            self._classes[(m.kind, m.name)] = cls

    def _add_entry_point(self, ep):
        try:
            cls = ep.load()
        except Exception as e:
            raise BenchError(f"entry point '{ep.name} = {ep.value}' (group {ENTRY_POINT_GROUP}) failed to import: "
                             f"{type(e).__name__}: {e}") from e
        yml = Path(inspect.getfile(cls)).parent / "submission.yaml"
        if not yml.is_file():
            raise BenchError(f"entry point '{ep.name} = {ep.value}': no submission.yaml beside {inspect.getfile(cls)}; "
                             f"ship the manifest in the package next to the module")
        self._add(load_manifest(yml), cls=cls)

    def names(self, kind: str) -> list[str]:
        return sorted(self._manifests[kind])

    def manifest(self, kind: str, name: str, where: str | None = None) -> Manifest:
        try:
            return self._manifests[kind][name]
        except KeyError:
            raise UnknownPluginError(kind, name, self.names(kind), where) from None

    def resolve_params(self, kind: str, name: str, overrides: dict, where: str | None = None) -> dict:
        """Manifest defaults merged with overrides; an undeclared override, or one its declaration refuses (type,
        range, choices: params.Param), is an error naming where it was set and the manifest that declares it."""
        m = self.manifest(kind, name, where)
        try:
            return resolve(m.declared, overrides, f"{kind} '{name}'")
        except ValueError as e:
            raise BenchError(f"{where + ': ' if where else ''}{e} (declared in "
                             f"{Path(m.folder, 'submission.yaml')})") from None

    def plugin_class(self, kind: str, name: str) -> type:
        key = (kind, name)
        if key not in self._classes:
            m = self.manifest(kind, name)
            self._classes[key] = _import_entry(m)
        cls = self._classes[key]
        if not (isinstance(cls, type) and issubclass(cls, BASES[kind])):
            raise BenchError(f"{self.manifest(kind, name).folder}: entry {cls!r} is not a subclass of "
                             f"benchmark.{BASES[kind].__name__}")
        return cls

    def create(self, kind: str, name: str, params: dict | None = None, where: str | None = None) -> Plugin:
        merged = self.resolve_params(kind, name, params or {}, where)
        try:
            obj = self.plugin_class(kind, name)(**merged)
        except (ValueError, TypeError) as e:
            raise BenchError(f"{where + ': ' if where else ''}{kind} '{name}' rejected its parameters {merged}: {e} "
                             f"(defaults in {Path(self.manifest(kind, name).folder, 'submission.yaml')})") from e
        obj.manifest = self.manifest(kind, name)
        return obj

    def code_hash(self, kind: str, name: str) -> str:
        return source_hash(Path(self.manifest(kind, name).folder))


def _import_entry(m: Manifest) -> type:
    mod_name, _, cls_name = m.entry.partition(":")
    folder = Path(m.folder)
    file = folder / (mod_name.replace(".", "/") + ".py")
    if not file.is_file():
        raise ConfigError(folder / "submission.yaml", "entry", f"module file {file.name} not found in {folder}")
    qualname = f"bdbench_submissions.{m.kind}.{m.name.replace('-', '_')}.{mod_name}"
    spec = importlib.util.spec_from_file_location(qualname, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[qualname]
        raise BenchError(f"{file}: failed to import: {type(e).__name__}: {e}") from e
    if not hasattr(module, cls_name):
        raise ConfigError(folder / "submission.yaml", "entry", f"{file.name} defines no '{cls_name}'")
    return getattr(module, cls_name)


def default_roots() -> list[Path]:
    """The repository's submissions/, ./submissions, and any folders in $BDBENCH_SUBMISSIONS (os.pathsep-separated)."""
    roots = [REPO_ROOT / "submissions", Path.cwd() / "submissions"]
    roots += [Path(p) for p in os.environ.get("BDBENCH_SUBMISSIONS", "").split(os.pathsep) if p]
    seen, out = set(), []
    for r in roots:
        r = r.resolve()
        if r.is_dir() and r not in seen:
            seen.add(r)
            out.append(r)
    return out
