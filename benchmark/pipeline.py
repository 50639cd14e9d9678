"""The experiment: stages with cached artifacts, and one result per cell.

    clean upstream ──▶ backdoored upstream (attack, seed) ──▶ downstream (seed) ──▶ defended (defense)
          └──────────────────────────────────────────────▶ downstream (seed)   [the clean-upstream baseline]

Every stage is an artifact in the `Store`, keyed by a hash of everything that determines it;
evaluations are cached the same way. A cell is (attack, defense or none, seed): its result file
holds the scores before transfer, after transfer (with the clean-upstream baseline), and after
the defense, with provenance and each stage's wall time.
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

from . import metrics, models, training
from .config import to_dict
from .data import ImageSet, load as load_data, split
from .errors import BenchError
from .plugins import Attack, Context, Defense, Poisoning
from .provenance import collect
from .registry import Registry
from .results import scoring_defenses
from .resultfile import CLEAN_UPSTREAM, AttackRef, CellError, DefenseRef, Metrics, Result, ScenarioRef
from .resultfile import read_if_valid, validate, write as write_result
from .scenario import PluginSpec, Scenario
from .store import Artifact, Store
from .zoo import Checkpoint, Zoo



@dataclass
class Data:
    up_train: ImageSet
    up_test: ImageSet
    down_train: ImageSet  # the victim's training set (validation held out); protocol none: up_train
    down_val: Optional[ImageSet]  # t* is chosen on it; protocol none: None (the attack's own targets)
    down_test: ImageSet   # protocol none: up_test


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
    _data: Optional[Data] = field(default=None, init=False)
    _replayed: tuple = field(default=(), init=False)  # (planted key, seed, Poisoning): the last poisoning replayed

    def __post_init__(self):
        from .isolation import resolve_mode
        self.isolate = resolve_mode(self.isolate, log=self.log)  # "sandbox" falls back to "process", loudly

    # ---------------------------------------------------------------- data
    @property
    def data(self) -> Data:
        if self._data is None:
            sc, cache = self.scenario, self.store.root / "data"
            up_train, up_test = load_data(sc.upstream.data, sc.image, cache, sc.base_dir)
            if not sc.downstream.transfers:  # no transfer: the victim's task is the upstream task
                self._data = Data(up_train, up_test, up_train, None, up_test)
                return self._data
            tr, te = load_data(sc.downstream.data, sc.image, cache, sc.base_dir)
            keep, val = split(tr.labels, sc.downstream.val_fraction, sc.downstream.split_seed)
            self._data = Data(up_train, up_test, tr.subset(keep), tr.subset(val), te)
        return self._data

    def ctx(self, seed: int) -> Context:
        return Context(self.device, seed, self.progress)

    # ---------------------------------------------------------------- plugins
    def _ident(self, kind: str, spec: PluginSpec) -> dict:
        params = self.registry.resolve_params(kind, spec.name, spec.params)
        return {"name": spec.name, "params": params, "code": self.registry.code_hash(kind, spec.name)}

    def _attack(self, spec: PluginSpec, planted: Optional[Artifact] = None) -> Attack:
        """The attack plugin; with `planted` (its backdoor artifact), its learned trigger restored."""
        attack = self.registry.create("attack", spec.name, spec.params)
        if planted is not None:
            attack.load_state(planted.tensors("attack"))
        return attack

    def _poisoning(self, attack: PluginSpec, planted: Artifact, seed: int) -> Poisoning:
        """The poisoning the default plant() made for this backdoor (Attack.planted_poisoning), replayed on the
        upstream training set. Kept for the last backdoor, whose cell's defenses all ask for it."""
        if self._replayed[:2] != (planted.key, seed):
            poisoning = self._attack(attack, planted).planted_poisoning(self.data.up_train, self.scenario.attack,
                                                                        self.ctx(seed))
            self._replayed = (planted.key, seed, poisoning)
        return self._replayed[2]

    # ---------------------------------------------------------------- stages
    def _build(self, stage: str, spec: dict, fn, what: str) -> Artifact:
        found = self.store.get(stage, spec)
        if found is None:
            if not self.build:
                raise BenchError(f"stage '{stage}' ({what}) has not been run in {self.store.root}; run it first")
            self.log(f"[{stage}] {what}")
        return found or self.store.build(stage, spec, fn)

    def _from_zoo(self, c: Checkpoint, attack: Optional[Attack] = None):
        """A stage's output taken from a published checkpoint: pulled, verified, loaded."""
        from safetensors.torch import load_file

        from . import hub
        paths = hub.pull(c)
        model = models.load(paths["model"], c.config)
        tensors = load_file(str(paths["trigger"])) if "trigger" in paths else {}
        if attack is not None:
            attack.load_state(tensors)  # fails loudly if the trigger does not fit the attack
        info = {"zoo": {"name": c.name, "repo": c.repo, "revision": c.revision}}
        return model, {"info": info, "metrics": c.scores, "tensors": {"attack": tensors}}

    @staticmethod
    def _zoo_spec(c: Checkpoint) -> dict:
        return {"repo": c.repo, "revision": c.revision, "model": c.model.sha256,
                "trigger": c.trigger.sha256 if c.trigger else None}

    def clean_upstream(self) -> Artifact:
        sc = self.scenario
        entry = self.zoo.find(sc, "upstream", sc.upstream.seed) if self.zoo else None
        if entry is not None:
            return self._build("upstream", {"zoo": self._zoo_spec(entry)}, lambda: self._from_zoo(entry),
                               f"pull clean upstream {entry.name} from {entry.repo}")
        spec = {"image": to_dict(sc.image), "upstream": to_dict(sc.upstream)}

        def fn():
            d = self.data
            torch.manual_seed(sc.upstream.seed)
            model = models.Classifier(sc.upstream.arch, d.up_train.num_classes, sc.image.channels,
                                      pretrained=sc.upstream.pretrained)
            self.ctx(sc.upstream.seed).train(model, d.up_train, sc.upstream.train, desc="clean upstream")
            ca = metrics.accuracy(training.predict(model, d.up_test, device=self.device), d.up_test.labels)
            return model, {"metrics": {"ca": ca}}
        return self._build("upstream", spec, fn, f"train clean {sc.upstream.arch} on upstream data")

    def backdoored_upstream(self, attack: PluginSpec, seed: int) -> Artifact:
        sc = self.scenario
        ident = self._ident("attack", attack)
        entry = self.zoo.find(sc, "backdoor", seed, attack.name, ident["params"]) if self.zoo else None
        if entry is not None:
            return self._build("backdoor", {"zoo": self._zoo_spec(entry), "attack": ident},
                               lambda: self._from_zoo(entry, self._attack(attack)),
                               f"pull {attack.id} (seed {seed}) from {entry.repo}")
        clean = self.clean_upstream()
        spec = {"clean": clean.key, "attack": ident, "budget": to_dict(sc.attack), "seed": seed}

        def fn():
            torch.manual_seed(seed)
            a = self._attack(attack)
            model = a.plant(clean.model(), self.data.up_train, sc.attack, self.ctx(seed))
            if not isinstance(model, models.Classifier):
                raise BenchError(f"attack '{attack.name}': plant() must return the Classifier it was given")
            return model, {"info": json.loads(json.dumps(a.info)), "tensors": {"attack": a.state()}}
        return self._build("backdoor", spec, fn, f"plant {attack.id} (seed {seed})")

    def downstream(self, upstream: Artifact, seed: int, what: str) -> Artifact:
        """The model the victim deploys: `upstream` fine-tuned on the downstream task, or (protocol none)
        `upstream` itself."""
        sc = self.scenario
        if not sc.downstream.transfers:
            return upstream
        spec = {"upstream": upstream.key, "image": to_dict(sc.image), "downstream": to_dict(sc.downstream),
                "seed": seed}

        def fn():
            d = self.data
            torch.manual_seed(seed)
            model = upstream.model().reset_head(d.down_train.num_classes)
            models.set_protocol(model, sc.downstream.protocol, sc.downstream.blocks)
            training.fit(model, d.down_train, sc.downstream.train, device=self.device, seed=seed,
                         desc=f"transfer {what}", progress=self.progress)  # only what the protocol leaves trainable
            models.set_protocol(model, "full")
            ca = metrics.accuracy(training.predict(model, d.down_test, device=self.device), d.down_test.labels)
            return model, {"metrics": {"ca": ca}}
        return self._build("downstream", spec, fn, f"transfer {what} (seed {seed}, protocol {sc.downstream.protocol})")

    # ---------------------------------------------------------------- evaluation
    def _scores(self, model, attack: Optional[Attack], test: ImageSet, target) -> dict:
        pred = training.predict(model, test, device=self.device)
        if attack is None:
            return {"ca": metrics.accuracy(pred, test.labels), "asr": None, "ra": None}
        trig = training.predict(model, test, device=self.device, transform=attack.apply)
        return {"ca": metrics.accuracy(pred, test.labels),
                "asr": metrics.attack_success_rate(trig, test.labels, target),
                "ra": metrics.robust_accuracy(trig, test.labels, target)}

    def eval_upstream(self, art: Artifact, attack: PluginSpec, planted: Artifact) -> dict:
        """Same label space: the attack's own targets. `planted` fixes the trigger (and its learned state)."""
        spec = {"model": art.key, "trigger": planted.key, "budget": to_dict(self.scenario.attack), "level": "upstream"}

        def fn():
            a, test = self._attack(attack, planted), self.data.up_test
            return None, {"metrics": self._scores(art.model(), a, test, a.targets(test.labels, test.num_classes,
                                                                                  self.scenario.attack.target))}
        return self.store.build("eval", spec, fn).meta["metrics"]

    def eval_transfer(self, art: Artifact, attack: PluginSpec, planted: Artifact) -> dict:
        """After transfer: t* from triggered validation images, then ASR/RA on the test set. Protocol none: the
        scores in the attack's own label space (eval_upstream), with the budget's target as t*.

        Every scored set gets a fresh attack instance (`draws: per-set`): an attack that draws its trigger at
        random (random-backdoor) then gives the test set the same triggers here as in `defend`."""
        if not self.scenario.downstream.transfers:
            return {**self.eval_upstream(art, attack, planted), "target": self.scenario.attack.target}
        spec = {"model": art.key, "trigger": planted.key, "level": "transfer", "draws": "per-set"}

        def fn():
            d, model = self.data, art.model()
            val_pred = training.predict(model, d.down_val, device=self.device,
                                        transform=self._attack(attack, planted).apply)
            t = metrics.transfer_target(val_pred, d.down_val.num_classes)
            return None, {"metrics": {**self._scores(model, self._attack(attack, planted), d.down_test, t),
                                      "target": t}}
        return self.store.build("eval", spec, fn).meta["metrics"]

    def _goal(self, a: Attack, test: ImageSet, target: int):
        """The label each triggered test input should receive: t* after transfer; without transfer, the attack's
        own targets (all-to-all attacks included)."""
        if self.scenario.downstream.transfers:
            return target
        return a.targets(test.labels, test.num_classes, self.scenario.attack.target)

    def _defender_data(self, attack: Optional[PluginSpec], planted: Optional[Artifact], seed: int) -> ImageSet:
        """The defender's clean budget: a stratified `defender.budget` share of the victim's training set, drawn
        with the cell's seed. Protocol none: of the upstream training set, among the samples the attack's poisoning
        left untouched (the same draw plant() made; an attack that controls training has no poisoned set)."""
        sc, d = self.scenario, self.data
        pool = torch.arange(len(d.down_train))
        if not sc.downstream.transfers and attack is not None \
                and self.registry.plugin_class("attack", attack.name).poisons_data:
            touched = self._poisoning(attack, planted, seed).indices
            pool = pool[~torch.isin(pool, touched)]
        share = sc.defender.budget if len(pool) == len(d.down_train) else \
            min(1.0, sc.defender.budget * len(d.down_train) / len(pool))
        _, held = split(d.down_train.labels[pool], share, seed)
        return d.down_train.subset(pool[held])

    def _eval_inputs(self, a: Attack, goal) -> tuple[torch.Tensor, torch.Tensor]:
        """Input-level detection set: every clean test image (label 0) and every triggered test image whose
        true label is not its target (`goal`: t*, or per input without transfer) (label 1), shuffled with a fixed
        permutation; uint8 images and labels."""
        test = self.data.down_test
        nt = test.images[test.labels != goal]
        trig = a.apply_uint8(nt)
        images = torch.cat([test.images, trig])
        labels = torch.cat([torch.zeros(len(test), dtype=torch.long), torch.ones(len(trig), dtype=torch.long)])
        perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        return images[perm], labels[perm]

    def defend(self, delivered: Artifact, defense: PluginSpec, attack: Optional[PluginSpec],
               planted: Optional[Artifact], target: Optional[int], before: Optional[dict], seed: int) -> Artifact:
        """A model-position defense on a delivered downstream model. Without an attack (a control: the model
        transferred from the clean upstream) only its CA and model score are measured."""
        sc = self.scenario
        spec = {"model": delivered.key, "defense": self._ident("defense", defense),
                "defender": {"budget": sc.defender.budget}, "seed": seed,
                "eval": None if attack is None else {"trigger": planted.key, "target": target, "draws": "per-set"}}
        if not sc.downstream.transfers:
            spec["defender"]["pool"] = "untouched-upstream"

        def fn():
            d = self.data
            clean = self._defender_data(attack, planted, seed)
            # a fresh attack instance per scored set: the test set gets the triggers eval_transfer gave it
            a = None if attack is None else self._attack(attack, planted)
            goal = None if a is None else self._goal(a, d.down_test, target)
            # the defense sees a private copy of the delivered model and the clean budget, nothing else;
            # its per-input scorer sees unlabeled, shuffled clean and triggered inputs only after run() returned
            eval_images, eval_labels = self._eval_inputs(self._attack(attack, planted), goal) \
                if a is not None else (None, None)
            out = self._invoke(defense, delivered, clean, eval_images, seed)
            model = out["model"]
            after = self._scores(model if model is not None else delivered.model(), a, d.down_test, goal)
            m = {**after, "repaired": model is not None, "clean_budget": len(clean),
                 "model_score": metrics.finite_or_none(out["model_score"]), "input_auroc": None}
            nonfinite = {"model_score": metrics.nonfinite_label(out["model_score"])}
            if a is not None:
                m["der"] = metrics.der(before["ca"], after["ca"], before["asr"], after["asr"])
                if out["scores"] is not None:
                    if out["scores"].shape != eval_labels.shape:
                        raise BenchError(f"defense '{defense.name}': input_scorer gave {tuple(out['scores'].shape)} "
                                         f"scores for {len(eval_labels)} inputs; it must return one per input")
                    det = metrics.detection(eval_labels.numpy(), out["scores"].numpy())
                    m.update(input_auroc=det["auroc"], input_aupr=det["aupr"], input_tpr_at_5fpr=det["tpr_at_5fpr"])
                    nonfinite["input_scores"] = det["nonfinite"]
            else:
                m["der"] = None
            _flag_nonfinite(m, nonfinite, f"defense '{defense.name}'", self.log)
            return model, {"metrics": m, "info": out["info"], "isolation": self.isolate}
        what = (f"{defense.id} against {attack.id}" if attack is not None
                else f"{defense.id} on the clean-upstream model")
        return self._build("defense", spec, fn, f"{what} (seed {seed})")

    def inspect(self, defense: PluginSpec, attack: PluginSpec, planted: Artifact, seed: int) -> Artifact:
        """A data-position defense: the upstream training set with this attack's poison in it (mask withheld)
        and the backdoored upstream model trained on it; scored against the poison mask."""
        sc = self.scenario
        spec = {"model": planted.key, "defense": self._ident("defense", defense), "seed": seed,
                "budget": to_dict(sc.attack)}

        def fn():
            up, poisoning = self.data.up_train, self._poisoning(attack, planted, seed)
            train = poisoning.applied_to(up)
            mask = torch.zeros(len(up), dtype=torch.bool)
            mask[poisoning.indices] = True
            out = self._invoke(defense, planted, ImageSet(train.images, train.labels, list(up.classes)), None, seed)
            s = out["sample_scores"]
            if s is None or s.shape != (len(up),):
                raise BenchError(f"defense '{defense.name}': inspect() must return sample_scores with one score per "
                                 f"training sample ({len(up)}), got {None if s is None else tuple(s.shape)}")
            det = metrics.detection(mask.numpy(), s.numpy())
            m = {"sample_auroc": det["auroc"], "sample_aupr": det["aupr"], "sample_tpr_at_5fpr": det["tpr_at_5fpr"],
                 "samples": len(up), "poisoned": int(mask.sum())}
            _flag_nonfinite(m, {"sample_scores": det["nonfinite"]}, f"defense '{defense.name}'", self.log)
            flags = out["sample_flags"]
            if flags is not None:
                flags = flags.bool()
                m.update(flagged=int(flags.sum()), flagged_tpr=float(flags[mask].float().mean()),
                         flagged_fpr=float(flags[~mask].float().mean()))
            return None, {"metrics": m, "info": out["info"], "isolation": self.isolate}
        return self._build("defense", spec, fn, f"{defense.id} inspects the training set poisoned by {attack.id} "
                                                f"(seed {seed})")

    def _invoke(self, defense: PluginSpec, delivered: Artifact, data: ImageSet, eval_images, seed: int) -> dict:
        """Run a defense, in its own process when isolating; a plain dict of what it returned."""
        sc = self.scenario
        torch.manual_seed(seed)
        if self.isolate != "none":
            from .isolation import run_defense
            return run_defense(roots=self.registry.roots, name=defense.name, params=defense.params,
                               model_path=delivered.folder / "model.safetensors",
                               config=delivered.meta["model"]["config"], data=data, eval_images=eval_images,
                               device=self.device, seed=seed, time_limit=sc.defender.time_limit_s,
                               memory_gb=sc.defender.memory_gb, mode=self.isolate)
        plugin: Defense = self.registry.create("defense", defense.name, defense.params)
        ctx = self.ctx(seed)
        model = models.forget_history(delivered.model())  # what an isolated defense receives (models.for_defense)
        out = plugin.inspect(model, data, ctx) if plugin.position == "data" else plugin.run(model, data, ctx)
        from .isolation import checked
        out = checked(out, defense.name, delivered.model())
        s = None
        if out.input_scorer is not None and eval_images is not None:
            s = training.scores(out.input_scorer, ImageSet(eval_images, torch.zeros(len(eval_images)), ["?"]),
                                device=self.device)
        return {"model": out.model, "model_score": _score(out.model_score), "info": json.loads(json.dumps(out.info)),
                "scores": s, "sample_scores": _cpu(out.sample_scores), "sample_flags": _cpu(out.sample_flags)}

    def position(self, defense: PluginSpec) -> str:
        return self.registry.plugin_class("defense", defense.name).position

    # ---------------------------------------------------------------- cells
    def run(self, attacks: list[PluginSpec] | None = None, defenses: list[PluginSpec] | None = None,
            seeds: list[int] | None = None) -> list[dict]:
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

    def controls(self, seed: int, defenses: list[PluginSpec] | None = None) -> list[dict]:
        defenses = self.scoring_defenses(self.scenario.defenses if defenses is None else defenses)
        return self._controls(defenses, seed) if defenses else []

    def _controls(self, defenses: list[PluginSpec], seed: int) -> list[dict]:
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

    def cell(self, attack: PluginSpec, seed: int, defenses: list[PluginSpec] | None = None) -> list[dict]:
        """One attack at one seed: its own cell and one per defense; a null attack (one that plants nothing) is a
        control, defended only by the defenses that give a model score (see scoring_defenses)."""
        defenses = self.scenario.defenses if defenses is None else defenses
        if not self.registry.plugin_class("attack", attack.name).plants_backdoor:
            defenses = self.scoring_defenses(defenses)
        return self._cells(attack, defenses, seed)

    def _cells(self, attack: PluginSpec, defenses: list[PluginSpec], seed: int) -> list[dict]:
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
            a, test = self._attack(attack, planted), self.data.up_test
            goal = a.targets(test.labels, test.num_classes, sc.attack.target)
            idx = torch.nonzero(goal != test.labels).flatten()[:4]
            media.write(folder, planted.model(), a, test.images[idx], goal[idx])
        except Exception as e:  # pictures must never cost a result
            self.log(f"[media] {attack.id}: could not draw the trigger examples: {type(e).__name__}: {e}")

    def _write(self, base: dict, defense: Optional[PluginSpec], seed: int, stages: dict, scores: Optional[dict],
               info: Optional[dict] = None, error: Optional[BaseException] = None) -> Result:
        sc = self.scenario
        res = Result(
            scenario=ScenarioRef(sc.name, sc.version, sc.sha256, sc.recipe,
                                 None if sc.downstream.transfers else sc.downstream.protocol),
            role=base["role"], attack=base["attack"], seed=seed,
            defense=None if defense is None else DefenseRef(
                defense.id, defense.name, self.registry.resolve_params("defense", defense.name, defense.params),
                self.position(defense), self.registry.code_hash("defense", defense.name)),
            status="ok" if error is None else "failed",
            metrics=Metrics.from_dict(scores, f"{sc.name}: the harness's scores"),
            info=_labelled(info),
            artifacts={k: v.key for k, v in stages.items()},
            # the weights behind each key: a stage retrained elsewhere (other hardware) keeps its key, not its sha
            weights={k: v.meta["model"]["sha256"] for k, v in stages.items() if v.has_model},
            wall_time_s={k: round(v.meta["wall_time_s"], 3) for k, v in stages.items()},
            upstream_build=stages["upstream"].meta["model"]["sha256"] if "upstream" in stages else None,
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
        validate(json.loads(res.dumps()), str(path))  # a harness bug fails its first cell, not every later read
        kept = _unchanged(path, res)
        if kept is not None:  # the same finished cell from the same stages: keep its file and its provenance
            return kept
        write_result(path, res)  # validated; atomic: two runs writing the same cell leave one whole file
        return res


def _unchanged(path: Path, res: Result) -> Optional[Result]:
    """The result already at `path` when it is the same finished cell: status ok, same scenario, same
    artifacts (so the same stages computed its numbers), the same weights and the same metrics and info. Rewriting
    it would only replace the provenance of the code that computed those stages with that of the code that re-read
    them."""
    if not res.ok or not path.is_file():
        return None
    old = read_if_valid(path)
    if old is None:
        return None
    new = Result.from_dict(res.to_dict())  # as it would read back (non-finite scores as null)
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


def _flag_nonfinite(m: dict, found: dict, who: str, log) -> None:
    """Record in the metrics which of a defense's scores were NaN or infinite (each counted 0.5: metrics.detection)."""
    found = {k: v for k, v in found.items() if v}
    if found:
        m["nonfinite"] = found
        log(f"[nonfinite] {who} returned NaN or infinite scores ({found}); each counts 0.5 (a tie) in detection")


def _score(v) -> Optional[float]:
    return None if v is None else float(v)


def _cpu(t):
    return None if t is None else torch.as_tensor(t).detach().flatten().cpu()
