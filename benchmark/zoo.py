"""The model zoo: published checkpoints, pinned by Hub revision and sha256.

`benchmark/zoo.yaml` (or any file passed with --zoo) lists one entry per checkpoint. A scenario run takes
its clean or backdoored upstream checkpoint from the zoo when an entry matches (scenario name and version,
stage, attack name and parameters, seed), so that every defense is scored on the same published models;
it builds the checkpoint locally only when no entry matches or when asked to (`--no-zoo`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .config import Invalid, parse, read_yaml, to_dict
from .errors import BenchError

SHIPPED = Path(str(resources.files("benchmark") / "zoo.yaml"))


@dataclass
class FileRef:
    filename: str
    sha256: str

    def check(self):
        if not self.filename.endswith(".safetensors"):
            raise Invalid("filename", "only .safetensors files are published or loaded (a pickle can run code)")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise Invalid("sha256", "must be 64 lowercase hex digits")


@dataclass
class ScenarioRef:
    name: str
    version: int


@dataclass
class AttackRef:
    name: str
    params: dict[str, Any]
    target: int
    poison_rate: float


@dataclass
class Checkpoint:
    name: str
    repo: str
    revision: str
    model: FileRef
    config: dict[str, Any]           # rebuilds the network: arch, num_classes, in_chans, mean, std
    scenario: ScenarioRef
    stage: Literal["upstream", "backdoor"]
    seed: int
    attack: Optional[AttackRef] = None
    trigger: Optional[FileRef] = None  # an attack's learned trigger state, when it has one
    scores: dict[str, Any] = field(default_factory=dict)
    licence: str = "apache-2.0"

    def check(self):
        if len(self.revision) != 40 or any(c not in "0123456789abcdef" for c in self.revision):
            raise Invalid("revision", "pin a full 40-hex commit sha, not a branch or tag")
        if "/" not in self.repo:
            raise Invalid("repo", "must be 'ORG/NAME'")
        missing = {"arch", "num_classes", "in_chans", "mean", "std"} - set(self.config)
        if missing:
            raise Invalid("config", f"missing {sorted(missing)}")
        if (self.stage == "backdoor") != (self.attack is not None):
            raise Invalid("attack", "a backdoor checkpoint names its attack; a clean upstream one names none")


@dataclass
class ZooFile:
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def check(self):
        names = [c.name for c in self.checkpoints]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise Invalid("checkpoints", f"duplicate names {sorted(dup)}")


class Zoo:
    def __init__(self, path: Path | str = SHIPPED):
        self.path = Path(path)
        if not self.path.is_file():
            raise BenchError(f"zoo registry {self.path} not found")
        data = read_yaml(self.path.read_bytes(), self.path) or {}
        self.entries = {c.name: c for c in parse(ZooFile, data, file=self.path).checkpoints}

    def __getitem__(self, name: str) -> Checkpoint:
        try:
            return self.entries[name]
        except KeyError:
            raise BenchError(f"no checkpoint '{name}' in {self.path}; known: "
                             f"{', '.join(sorted(self.entries)) or '(none)'}") from None

    def find(self, scenario, stage: str, seed: int, attack_name: str | None = None,
             attack_params: dict | None = None) -> Optional[Checkpoint]:
        for c in self.entries.values():
            if (c.scenario.name, c.scenario.version, c.stage) != (scenario.name, scenario.version, stage):
                continue
            if stage == "upstream":
                return c
            if (c.seed == seed and c.attack.name == attack_name and c.attack.params == attack_params
                    and c.attack.target == scenario.attack.target
                    and c.attack.poison_rate == scenario.attack.poison_rate):
                return c
        return None

    def for_scenario(self, scenario) -> list[Checkpoint]:
        return [c for c in self.entries.values()
                if (c.scenario.name, c.scenario.version) == (scenario.name, scenario.version)]


def entry_yaml(c: Checkpoint) -> str:
    return yaml.safe_dump({"checkpoints": [to_dict(c)]}, sort_keys=False)
