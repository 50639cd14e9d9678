"""A scenario's cells: the stages (benchmark/stages/) composed, cached in the store, and one result file per cell.

    clean upstream ──▶ backdoored upstream (attack, seed) ──▶ downstream (seed) ──▶ defended (defense)
          └──────────────────────────────────────────────▶ downstream (seed)   [the clean-upstream baseline]

Every stage is an artifact in the `Store`, keyed by a hash of everything that determines it (each stage module's
`spec`); evaluations are cached the same way. A cell is (attack, defense or none, seed): its result file holds
the scores before transfer, after transfer (with the clean-upstream baseline), and after the defense, with
provenance and each stage's wall time.
"""
from __future__ import annotations

import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .errors import BenchError
from .plugins import Context
from .provenance import collect
from .registry import Registry
from .results import scoring_defenses
from .resultfile import CLEAN_UPSTREAM, AttackRef, CellError, DefenseRef, Metrics, Result, ScenarioRef
from .resultfile import read_if_valid, write as write_result
from .scenario import PluginSpec, Scenario
from .stages import backdoor, defend, evaluate, inspect, transfer, upstream
from .stages.env import Data, Env
from .store import Artifact, Store
from .zoo import Zoo

__all__ = ["Data", "Runner", "cell_path"]


def cell_path(results: Path, sc: Scenario, attack: str, defense: Optional[str], seed: int) -> Path:
    return Path(results) / f"{sc.name}-v{sc.version}" / attack / (defense or "none") / f"seed-{seed}.json"


@dataclass
class Runner:
    scenario: Scenario
    registry: Registry
    store: Store
    results: Path
    device: torch.device
    progress: bool = True
    log: Callable[[str], None] = print
    zoo: Optional[Zoo] = None   # published checkpoints to use instead of building upstream stages
    isolate: bool | str = False  # "sandbox" / "process": each defense in its own process, with the scenario's limits
                                 # (isolation.MODES); True means "sandbox", False "none" (in this process)
    build: bool = True          # False: only look up finished stages (e.g. to publish one)
    env: Env = field(init=False)

    def __post_init__(self):
        from .isolation import resolve_mode
        self.isolate = resolve_mode(self.isolate, log=self.log)  # "sandbox" falls back to "process", loudly
        self.env = Env(self.scenario, self.registry, self.device, self.store.root / "data", self.progress, self.log,
                       self.isolate)

    @property
    def data(self) -> Data:
        return self.env.data

    def ctx(self, seed: int) -> Context:
        return self.env.ctx(seed)

    # ---------------------------------------------------------------- stages
    def _build(self, stage: str, spec: dict, fn, what: str) -> Artifact:
        found = self.store.get(stage, spec)
        if found is None:
            if not self.build:
                raise BenchError(f"stage '{stage}' ({what}) has not been run in {self.store.root}; run it first")
            self.log(f"[{stage}] {what}")
        return found or self.store.build(stage, spec, fn)

    def clean_upstream(self) -> Artifact:
        sc, env = self.scenario, self.env
        entry = self.zoo.find(sc, "upstream", sc.upstream.seed) if self.zoo else None
        if entry is not None:
            return self._build(upstream.STAGE, {"zoo": upstream.zoo_spec(entry)}, lambda: upstream.from_zoo(entry),
                               f"pull clean upstream {entry.name} from {entry.repo}")
        return self._build(upstream.STAGE, upstream.spec(sc), lambda: upstream.build(env),
                           f"train clean {sc.upstream.arch} on upstream data")

    def backdoored_upstream(self, attack: PluginSpec, seed: int) -> Artifact:
        sc, env = self.scenario, self.env
        ident = env.ident("attack", attack)
        entry = self.zoo.find(sc, "backdoor", seed, attack.name, ident["params"]) if self.zoo else None
        if entry is not None:
            return self._build(backdoor.STAGE, {"zoo": upstream.zoo_spec(entry), "attack": ident},
                               lambda: upstream.from_zoo(entry, env.attack(attack)),
                               f"pull {attack.id} (seed {seed}) from {entry.repo}")
        clean = self.clean_upstream()
        return self._build(backdoor.STAGE, backdoor.spec(env, clean.key, attack, seed),
                           lambda: backdoor.build(env, clean, attack, seed), f"plant {attack.id} (seed {seed})")

    def downstream(self, up: Artifact, seed: int, what: str) -> Artifact:
        """The model the victim deploys: `up` fine-tuned on the downstream task, or (protocol none) `up` itself."""
        sc = self.scenario
        if not sc.downstream.transfers:
            return up
        return self._build(transfer.STAGE, transfer.spec(self.env, up.key, seed),
                           lambda: transfer.build(self.env, up, seed, what),
                           f"transfer {what} (seed {seed}, protocol {sc.downstream.protocol})")

    def eval_upstream(self, art: Artifact, attack: PluginSpec, planted: Artifact) -> dict:
        """Same label space: the attack's own targets. `planted` fixes the trigger (and its learned state)."""
        return self.store.build(evaluate.STAGE, evaluate.upstream_spec(self.env, art, planted),
                                lambda: evaluate.upstream(self.env, art, attack, planted)).meta["metrics"]

    def eval_transfer(self, art: Artifact, attack: PluginSpec, planted: Artifact) -> dict:
        """After transfer (evaluate.transfer); protocol none: the scores in the attack's own label space, with the
        budget's target as t*."""
        if not self.scenario.downstream.transfers:
            return {**self.eval_upstream(art, attack, planted), "target": self.scenario.attack.target}
        return self.store.build(evaluate.STAGE, evaluate.transfer_spec(art, planted),
                                lambda: evaluate.transfer(self.env, art, attack, planted)).meta["metrics"]

    def defend(self, delivered: Artifact, defense: PluginSpec, attack: Optional[PluginSpec],
               planted: Optional[Artifact], target: Optional[int], before: Optional[dict], seed: int) -> Artifact:
        """A model-position defense on a delivered downstream model (stages.defend)."""
        spec = defend.spec(self.env, delivered.key, defense, seed, None if attack is None else planted.key, target)
        what = (f"{defense.id} against {attack.id}" if attack is not None
                else f"{defense.id} on the clean-upstream model")
        return self._build(defend.STAGE, spec,
                           lambda: defend.build(self.env, delivered, defense, attack, planted, target, before, seed),
                           f"{what} (seed {seed})")

    def inspect(self, defense: PluginSpec, attack: PluginSpec, planted: Artifact, seed: int) -> Artifact:
        """A data-position defense on the training set `attack` poisoned (stages.inspect)."""
        return self._build(inspect.STAGE, inspect.spec(self.env, planted.key, defense, seed),
                           lambda: inspect.build(self.env, defense, attack, planted, seed),
                           f"{defense.id} inspects the training set poisoned by {attack.id} (seed {seed})")

    def position(self, defense: PluginSpec) -> str:
        return self.registry.plugin_class("defense", defense.name).position

    def _position_of(self, defense: PluginSpec, scores: Optional[dict]) -> str:
        """The defense's position for its result file; for a defense whose class cannot be loaded (its cell records
        that error), what its scores show."""
        try:
            return self.position(defense)
        except Exception:
            return "data" if "sample_auroc" in ((scores or {}).get("defense") or {}) else "model"

    # ---------------------------------------------------------------- cells
    def run(self, attacks: list[PluginSpec] | None = None, defenses: list[PluginSpec] | None = None,
            seeds: list[int] | None = None) -> list[Result]:
        sc = self.scenario
        attacks = sc.attacks if attacks is None else attacks
        defenses = sc.defenses if defenses is None else defenses
        seeds = sc.seeds if seeds is None else seeds
        for kind, specs in (("attack", attacks), ("defense", defenses)):
            for s in specs:
                self.registry.resolve_params(kind, s.name, s.params, where=f"{sc.file}: {kind} '{s.id}'")
        cells = []
        null = [a for a in attacks if not self.registry.plugin_class("attack", a.name).plants_backdoor]
        for attack in [a for a in attacks if a not in null] + null:  # null attacks are controls: after the others
            for seed in seeds:
                cells += self.cell(attack, seed, defenses)
        for seed in (sc.clean_seeds if sc.clean_seeds is not None else seeds):
            cells += self.controls(seed, defenses)
        return cells

    def scoring_defenses(self, defenses: list[PluginSpec]) -> list[PluginSpec]:
        """The defenses that gave a model score in this scenario's results (results.scoring_defenses): they need
        controls."""
        ids = scoring_defenses(Path(self.results) / f"{self.scenario.name}-v{self.scenario.version}",
                               [d.id for d in defenses])
        return [d for d in defenses if d.id in ids]

    def controls(self, seed: int, defenses: list[PluginSpec] | None = None) -> list[Result]:
        defenses = self.scoring_defenses(self.scenario.defenses if defenses is None else defenses)
        return self._controls(defenses, seed) if defenses else []

    def _controls(self, defenses: list[PluginSpec], seed: int) -> list[Result]:
        """Each defense on the model transferred from the CLEAN upstream (seeds: the scenario's `clean_seeds`):
        the negatives of model-level detection, and the defense's cost on a model with nothing to remove."""
        base = {"role": CLEAN_UPSTREAM, "attack": None, "seed": seed}
        stages: dict[str, Artifact] = {}
        out = []
        try:
            stages["upstream"] = self.clean_upstream()
            delivered = self._stage(stages, "downstream_clean", self.downstream(stages["upstream"], seed,
                                                                                "from clean upstream"))
        except Exception as e:
            return [self._write(base, d, seed, stages, None, error=e) for d in defenses]
        for d in defenses:
            try:
                art = self.defend(delivered, d, None, None, None, None, seed)
                out.append(self._write(base, d, seed, {**stages, "defense": art},
                                       {"defense": art.meta["metrics"]}, info=art.meta.get("info")))
            except Exception as e:
                out.append(self._write(base, d, seed, stages, None, error=e))
        return out

    def cell(self, attack: PluginSpec, seed: int, defenses: list[PluginSpec] | None = None) -> list[Result]:
        """One attack at one seed: its own cell and one per defense; a null attack (one that plants nothing) is a
        control, defended only by the defenses that give a model score (see scoring_defenses)."""
        defenses = self.scenario.defenses if defenses is None else defenses
        if not self.registry.plugin_class("attack", attack.name).plants_backdoor:
            defenses = self.scoring_defenses(defenses)
        return self._cells(attack, defenses, seed)

    def _cells(self, attack: PluginSpec, defenses: list[PluginSpec], seed: int) -> list[Result]:
        plants = self.registry.plugin_class("attack", attack.name).plants_backdoor
        base = {"role": "backdoored" if plants else "null-attack",  # a null attack: negatives of model detection
                "attack": AttackRef(attack.id, attack.name,
                                    self.registry.resolve_params("attack", attack.name, attack.params),
                                    self.registry.code_hash("attack", attack.name)), "seed": seed}
        stages: dict[str, Artifact] = {}
        try:
            stages["upstream"] = self.clean_upstream()
            stages["backdoor"] = self.backdoored_upstream(attack, seed)
            base["attack"].info = stages["backdoor"].meta.get("info")
            clean = self._stage(stages, "downstream_clean",
                                self.downstream(stages["upstream"], seed, "from clean upstream"))
            delivered = self._stage(stages, "downstream",
                                    self.downstream(stages["backdoor"], seed, f"from {attack.id} upstream"))
            shared = {
                "upstream": {"clean": self.eval_upstream(stages["upstream"], attack, stages["backdoor"]),
                             "backdoored": self.eval_upstream(stages["backdoor"], attack, stages["backdoor"])},
                "transfer": {"clean": self.eval_transfer(clean, attack, stages["backdoor"]),
                             "backdoored": self.eval_transfer(delivered, attack, stages["backdoor"])},
            }
        except Exception as e:  # the attack (or a stage before any defense) failed: every cell of it fails
            return [self._write(base, d, seed, stages, None, error=e)
                    for d in [None, *defenses] if d is None or self._applies(d, attack)]
        self._media(attack, stages["backdoor"])
        out = [self._write(base, None, seed, stages, shared)]
        before, target = shared["transfer"]["backdoored"], shared["transfer"]["backdoored"]["target"]
        for d in defenses:
            try:
                if not self._applies(d, attack):
                    self.log(f"[skip] {d.id}: {attack.id} controls training; there is no poisoned set to inspect")
                    continue
                if self.position(d) == "data":
                    art = self.inspect(d, attack, stages["backdoor"], seed)
                else:
                    art = self.defend(delivered, d, attack, stages["backdoor"], target, before, seed)
                out.append(self._write(base, d, seed, {**stages, "defense": art},
                                       {**shared, "defense": art.meta["metrics"]}, info=art.meta.get("info")))
            except Exception as e:
                out.append(self._write(base, d, seed, stages, shared, error=e))
        return out

    def _stage(self, stages: dict, name: str, art: Artifact) -> Artifact:
        """Record a downstream stage in the cell's `stages`; without transfer the delivered model is the
        upstream artifact itself, already recorded, and is not listed twice."""
        if self.scenario.downstream.transfers:
            stages[name] = art
        return art

    def _applies(self, defense: PluginSpec, attack: PluginSpec) -> bool:
        """False for a training-data defense against an attack that controls training (no poisoned set exists);
        True where that cannot be told (an unknown plugin), so the cell records the error."""
        try:
            return self.position(defense) != "data" or self.registry.plugin_class("attack", attack.name).poisons_data
        except Exception:
            return True

    def _media(self, attack: PluginSpec, planted: Artifact) -> None:
        """Trigger examples and a Grad-CAM map beside the attack's results, once per attack (not fatal)."""
        from . import media
        sc = self.scenario
        folder = Path(self.results) / f"{sc.name}-v{sc.version}" / attack.id / "media"
        if (folder / "gradcam.png").exists():
            return
        try:
            a, test = self.env.attack(attack, planted), self.data.up_test
            goal = a.targets(test.labels, test.num_classes, sc.attack.target)
            idx = torch.nonzero(goal != test.labels).flatten()[:4]
            media.write(folder, planted.model(), a, test.images[idx], goal[idx])
        except Exception as e:  # pictures must never cost a result
            self.log(f"[media] {attack.id}: could not draw the trigger examples: {type(e).__name__}: {e}")

    def _write(self, base: dict, defense: Optional[PluginSpec], seed: int, stages: dict, scores: Optional[dict],
               info: Optional[dict] = None, error: Optional[BaseException] = None) -> Result:
        sc = self.scenario
        # the weights behind each key: a stage retrained elsewhere (other hardware) keeps its key, not its sha
        weights = {k: v.meta["model"]["sha256"] for k, v in stages.items() if v.has_model}
        res = Result(
            scenario=ScenarioRef(sc.name, sc.version, sc.sha256, sc.recipe,
                                 None if sc.downstream.transfers else sc.downstream.protocol),
            role=base["role"], attack=base["attack"], seed=seed,
            defense=None if defense is None else DefenseRef(
                defense.id, defense.name, self.registry.resolve_params("defense", defense.name, defense.params),
                self._position_of(defense, scores), self.registry.code_hash("defense", defense.name)),
            status="ok" if error is None else "failed",
            metrics=Metrics.from_dict(scores, f"{sc.name}: the harness's scores"),
            info=_labelled(info),
            artifacts={k: v.key for k, v in stages.items()},
            weights=weights, wall_time_s={k: round(v.meta["wall_time_s"], 3) for k, v in stages.items()},
            upstream_build=weights.get("upstream"),
            provenance={**collect(self.device), **({"isolation": stages["defense"].meta["isolation"]}
                                                   if "isolation" in getattr(stages.get("defense"), "meta", {})
                                                   else {})},
            finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        if error is not None:
            res.error = CellError(type(error).__name__, str(error), traceback.format_exception(error)[-6:])
            self.log(f"[failed] {res.attack_id} / {defense.id if defense else 'none'} / seed {seed}: "
                     f"{type(error).__name__}: {error}")
        path = cell_path(self.results, sc, res.attack_id, defense.id if defense else None, seed)
        # as it reads back (non-finite scores as null), validated: a harness bug fails its first cell, not every read
        kept = _unchanged(path, Result.from_dict(json.loads(res.dumps()), str(path)))
        if kept is not None:  # the same finished cell from the same stages: keep its file and its provenance
            return kept
        write_result(path, res)  # validated; atomic: two runs writing the same cell leave one whole file
        return res


def _unchanged(path: Path, new: Result) -> Optional[Result]:
    """The result already at `path` when it is the same finished cell: status ok, same scenario, same
    artifacts (so the same stages computed its numbers), the same weights and the same metrics and info. Rewriting
    it would only replace the provenance of the code that computed those stages with that of the code that re-read
    them. `new`: the cell's record as it reads back."""
    if not new.ok or not path.is_file():
        return None
    old = read_if_valid(path)
    if old is None:
        return None
    same = all(getattr(old, k) == getattr(new, k) for k in ("status", "scenario", "role", "attack", "defense", "seed",
                                                            "artifacts", "metrics", "info"))
    # a file from before weights were recorded (migrated with none) says nothing against these
    return old if same and (not old.weights or old.weights == new.weights) else None


def _labelled(o):
    """`info` with its non-finite floats as the strings 'nan', 'inf', '-inf' (JSON has no such numbers)."""
    if isinstance(o, float) and not math.isfinite(o):
        return repr(o)
    if isinstance(o, dict):
        return {k: _labelled(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_labelled(v) for v in o]
    return o
