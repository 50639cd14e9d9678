"""The result file, version 2: one cell (scenario x attack x defense x seed) as a typed record, with its one reader
and its one writer. Everything that reads results (the site, compare, the headline, calibration, the grid's resume
check) goes through `read` / `load`; the harness writes through `write`. The JSON Schema
(`benchmark/schemas/result.schema.json`) checks every file on reading; docs/results.md describes the fields.

A cell has a `role`, the one place that says what the delivered model descends from:
- `backdoored`: an upstream an attack planted a backdoor in;
- `null-attack`: the same injection fine-tuning without poison (an attack that plants nothing, e.g. `no-poison`);
- `clean-upstream`: the clean upstream itself (no attack: `attack` is null).
The last two are the negatives of model-level detection and the controls of a defense's cost.

Version 1 files (without `role`, `upstream_build` or `defense.position`) are refused with the command that
migrates them: `python ci/migrate_results_v2.py FOLDER`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from . import atomic
from .errors import BenchError

SCHEMA_VERSION = 2
SCHEMA = json.loads((resources.files("benchmark") / "schemas" / "result.schema.json").read_text())
CLEAN_UPSTREAM = "clean-upstream"  # the role, and the folder its cells are written under in place of an attack id


def _omit_none(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if getattr(obj, f.name) is not None}


def _build(cls, d: Optional[dict], where: str):
    if d is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise BenchError(f"{where}: unknown field(s) {', '.join(unknown)} in a {cls.__name__}")
    return cls(**d)


@dataclass
class Scores:
    """One model on one task: clean accuracy, attack success rate, robust accuracy (the true label on triggered
    inputs) and, after transfer, the downstream class the trigger is scored against."""
    ca: Optional[float] = None
    asr: Optional[float] = None
    ra: Optional[float] = None
    target: Optional[int] = None

    def to_dict(self) -> dict:
        d = {"ca": self.ca, "asr": self.asr, "ra": self.ra}
        return d if self.target is None else {**d, "target": self.target}


@dataclass
class Pair:
    """The model from the clean upstream and the one from the backdoored upstream, scored alike."""
    clean: Scores
    backdoored: Scores

    @classmethod
    def from_dict(cls, d: Optional[dict], where: str) -> Optional["Pair"]:
        if d is None:
            return None
        if "clean" not in d or "backdoored" not in d:
            raise BenchError(f"{where}: a metrics section needs both 'clean' and 'backdoored' scores, got {sorted(d)}")
        return cls(_build(Scores, d["clean"], where), _build(Scores, d["backdoored"], where))

    def to_dict(self) -> dict:
        return {"clean": self.clean.to_dict(), "backdoored": self.backdoored.to_dict()}


@dataclass
class DefenseScores:
    """What a defense achieved. Model position: the repaired model's scores (ca, asr, ra), DER, whether it
    repaired (`repaired`), the clean budget it had, its input-level detection and its model score. Data position:
    the sample-level detection of the poison it inspected. `nonfinite` names the scores that were NaN or infinite
    (each counted 0.5). A score the defense does not give is absent (None)."""
    ca: Optional[float] = None
    asr: Optional[float] = None
    ra: Optional[float] = None
    der: Optional[float] = None
    repaired: Optional[bool] = None
    clean_budget: Optional[int] = None
    input_auroc: Optional[float] = None
    input_aupr: Optional[float] = None
    input_tpr_at_5fpr: Optional[float] = None
    model_score: Optional[float] = None
    samples: Optional[int] = None
    poisoned: Optional[int] = None
    sample_auroc: Optional[float] = None
    sample_aupr: Optional[float] = None
    sample_tpr_at_5fpr: Optional[float] = None
    flagged: Optional[int] = None
    flagged_tpr: Optional[float] = None
    flagged_fpr: Optional[float] = None
    nonfinite: Optional[dict] = None

    MODEL = ("ca", "asr", "ra", "der", "repaired", "input_auroc", "model_score")  # written even when None
    DATA = ("samples", "poisoned", "sample_auroc", "sample_aupr", "sample_tpr_at_5fpr")

    def to_dict(self) -> dict:
        always = self.DATA if self.samples is not None else self.MODEL
        return {**{k: getattr(self, k) for k in always}, **_omit_none(self)}

    def get(self, key: str):
        """A score by name (None when absent): for code that picks metrics by name."""
        return getattr(self, key, None)


@dataclass
class Metrics:
    upstream: Optional[Pair] = None   # the upstream models on the upstream task (same label space)
    transfer: Optional[Pair] = None   # the models the victim transferred from them (or, protocol none, the same)
    defense: Optional[DefenseScores] = None

    @classmethod
    def from_dict(cls, d: Optional[dict], where: str) -> Optional["Metrics"]:
        if d is None:
            return None
        unknown = sorted(set(d) - {"upstream", "transfer", "defense"})
        if unknown:
            raise BenchError(f"{where}: unknown metrics section(s) {', '.join(unknown)}")
        return cls(Pair.from_dict(d.get("upstream"), where), Pair.from_dict(d.get("transfer"), where),
                   _build(DefenseScores, d.get("defense"), where))

    def to_dict(self) -> dict:
        return {k: v.to_dict() for k, v in (("upstream", self.upstream), ("transfer", self.transfer),
                                            ("defense", self.defense)) if v is not None}


@dataclass
class ScenarioRef:
    name: str
    version: int
    sha256: Optional[str] = None  # the scenario file (with a grid's overrides) that ran the cell
    recipe: Optional[str] = None  # its settings without the lists that choose cells (scenario.recipe_hash)
    protocol: Optional[str] = None  # "none" for a scenario without transfer, else absent

    @property
    def key(self) -> str:
        return f"{self.name}-v{self.version}"

    @property
    def transfers(self) -> bool:
        return self.protocol != "none"

    def to_dict(self) -> dict:
        return _omit_none(self) | {"sha256": self.sha256, "recipe": self.recipe}


@dataclass
class AttackRef:
    id: str
    name: str
    params: dict
    code: Optional[str] = None  # sha256 of the submission's source when the cell was computed
    info: Optional[dict] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class DefenseRef:
    id: str
    name: str
    params: dict
    position: str  # "model" (the delivered model and the clean budget) or "data" (the poisoned training set)
    code: Optional[str] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class CellError:
    type: str
    message: str
    traceback: list = field(default_factory=list)


@dataclass
class Result:
    scenario: ScenarioRef
    role: str
    attack: Optional[AttackRef]
    defense: Optional[DefenseRef]
    seed: int
    status: str  # "ok" or "failed"
    metrics: Optional[Metrics]
    artifacts: dict            # stage -> store key (a hash of the stage's inputs)
    weights: dict              # stage -> sha256 of its model's weights
    wall_time_s: dict          # stage -> seconds it took when built
    upstream_build: Optional[str]  # which build of the clean upstream the cell descends from (see `label_of`)
    provenance: dict
    finished: str
    info: Optional[dict] = None    # the defense's free-form info
    error: Optional[CellError] = None
    path: Optional[str] = field(default=None, compare=False)  # relative to the folder it was loaded from

    # ------------------------------------------------------------------ what the cell is
    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def attack_id(self) -> str:
        """The attack's id; for a clean-upstream control, 'clean-upstream' (the folder its files live in)."""
        return self.attack.id if self.attack is not None else CLEAN_UPSTREAM

    @property
    def defense_id(self) -> Optional[str]:
        return self.defense.id if self.defense is not None else None

    @property
    def transfers(self) -> bool:
        return self.scenario.transfers

    @staticmethod
    def label_of(build: Optional[str]) -> str:
        """A build in words: 'upstream <8 hex digits of its weights' sha256>', or the description a migrated file
        carries for a build whose weights it never recorded (results.build_labels makes labels unique)."""
        b = build or "build unknown"
        return f"upstream {b[:8]}" if is_sha(b) else b

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def from_dict(cls, d: dict, where: str = "result") -> "Result":
        """A validated record from a file's JSON (schema 2)."""
        validate(d, where)
        try:
            return cls(
                scenario=_build(ScenarioRef, d["scenario"], where), role=d["role"],
                attack=_build(AttackRef, d["attack"], where), defense=_build(DefenseRef, d["defense"], where),
                seed=d["seed"], status=d["status"], metrics=Metrics.from_dict(d["metrics"], where),
                artifacts=d["artifacts"], weights=d["weights"], wall_time_s=d["wall_time_s"],
                upstream_build=d["upstream_build"], provenance=d["provenance"], finished=d["finished"],
                info=d.get("info"), error=_build(CellError, d.get("error"), where))
        except TypeError as e:  # a field the schema allows but a record does not
            raise BenchError(f"{where}: {e}") from None

    def to_dict(self) -> dict:
        d = {"schema": SCHEMA_VERSION, "scenario": self.scenario.to_dict(), "role": self.role,
             "attack": None if self.attack is None else self.attack.to_dict(),
             "defense": None if self.defense is None else self.defense.to_dict(),
             "seed": self.seed, "status": self.status,
             "metrics": None if self.metrics is None else self.metrics.to_dict(),
             "artifacts": self.artifacts, "weights": self.weights, "wall_time_s": self.wall_time_s,
             "upstream_build": self.upstream_build, "provenance": self.provenance, "finished": self.finished,
             "info": self.info}
        if self.error is not None:
            d["error"] = dataclasses.asdict(self.error)
        return _finite(d)

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False)


class OldResultFile(BenchError):
    """A result file of an earlier version, which the reader refuses with the command that migrates it."""


def is_sha(s: str) -> bool:
    return len(s) == 64 and all(ch in "0123456789abcdef" for ch in s)


def _finite(o):
    """NaN (e.g. an ASR with no non-target input) or inf written as null: JSON has neither. (A plugin's free-form
    `info` carries them as the strings 'nan', 'inf', '-inf', which the harness sets before writing.)"""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema
    return jsonschema.Draft202012Validator(SCHEMA)


def validate(d: Any, where: str = "result") -> None:
    """Raise BenchError listing every schema violation with its JSON path; a version 1 file gets the command that
    migrates it."""
    import jsonschema

    if isinstance(d, dict) and d.get("schema") == 1:
        raise OldResultFile(f"{where}: a version 1 result file; migrate the folder it is in with "
                         f"`python ci/migrate_results_v2.py FOLDER` (a bdbench checkout), then read it again")
    errors = []
    for e in _validator().iter_errors(d):
        while e.context:  # an allOf/oneOf failure: report its most specific cause
            e = jsonschema.exceptions.best_match(e.context)
        errors.append(e)
    errors.sort(key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [f"  at {'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors[:10]]
        raise BenchError(f"{where}: does not match the result schema (benchmark/schemas/result.schema.json):\n"
                         + "\n".join(lines))


def read(path: Path, root: Optional[Path] = None) -> Result:
    """One result file, validated; `path` on the record is relative to `root` when given."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BenchError(f"{path}: not valid JSON: {e}") from None
    r = Result.from_dict(d, str(path))
    r.path = path.relative_to(root).as_posix() if root is not None else str(path)
    return r


def read_if_valid(path: Path) -> Optional[Result]:
    """The record at `path`, or None when there is none or it cannot be read (a half-written or foreign file):
    for the grid, to which such a file is an unfinished cell."""
    try:
        return read(path)
    except OldResultFile:
        raise  # not unfinished work to overwrite: the error says how to migrate it
    except (OSError, BenchError):
        return None


def load(root: Path) -> list[Result]:
    """Every result file under `root`, validated, in path order."""
    root = Path(root)
    if not root.is_dir():
        raise BenchError(f"{root}: no such results folder; pass --results with the folder your runs wrote "
                         "(bdbench run/grid --results), e.g. leaderboard/results in a checkout")
    return [read(p, root) for p in sorted(root.rglob("*.json"))]


def write(path: Path, r: Result) -> str:
    """Write the record atomically (two runs writing one cell leave one whole file or the other); returns the text.
    The text is validated first, so a harness bug fails its first cell rather than every later read."""
    text = r.dumps()
    validate(json.loads(text), str(path))
    atomic.write_text(Path(path), text)
    return text
