"""The plugin API: everything a submission imports, from this one module. Read it in a minute.

    from benchmark.api import Attack, Defense, DefenseOutput

    class MyAttack(Attack):
        def apply(self, x):                  # the trigger: a batch in [0, 1], NCHW, on x's device
            ...
        # optional: poison() (which samples, what image, what label; the harness trains) or
        # plant() (an attack that must control training itself)

    class MyDefense(Defense):                # position "model": the delivered model and the clean budget
        def run(self, model, clean, ctx):
            return DefenseOutput(model=..., model_score=..., input_scorer=...)

    class MyInspector(Defense):              # position "data": the poisoned training set, mask withheld
        position = "data"
        def inspect(self, model, train, ctx):
            return DefenseOutput(sample_scores=...)

**What a plugin receives.** Images are float tensors in [0, 1] (NCHW); datasets are `ImageSet`s (uint8 images,
labels, class names; `.batches(n, device)`, `.subset(idx)`). A model is a `Classifier`: `model(x)` gives logits,
`model.features(x)` the last feature map, `model.embed(x)` the penultimate features, `model.feature_mask` a
channel mask a pruning defense may zero, `model.num_classes`, `model.arch`, `model.net` (the timm network). It is
a private copy with every layer trainable. `ctx` (`Context`) lends the device, the cell's seed, seeded generators
(`ctx.generator(offset)`) and the harness's training loop (`ctx.train(model, data, recipe)`, all layers). A
defense never sees the attack, its target or triggered data; a data-position defense sees the upstream model and
its training set with the poison in it, not which samples are poisoned.

**Parameters** are declared once, in `submission.yaml` (type from the default; `range`, `choices`: see
`benchmark.params`), checked by the harness, merged with a scenario's overrides and handed over as `self.params`.
A plugin checks by hand only rules across parameters, raising ValueError in `__init__`.

**What it returns.** A defense returns a `DefenseOutput`: a repaired model, a model-level suspicion score, a
per-input scorer, per-sample scores and flags; any of them, plus `info` (JSON) recorded in the result. An attack
whose trigger is learned while planting keeps it in `state()` / `load_state()`; `self.info` is recorded.

The rest are helpers a plugin may use: `Recipe` and `Augment` (a training recipe for `ctx.train`), `split`
(stratified, seeded), `to_float` / `to_uint8`, `embeddings` (penultimate features of a dataset), and the
training loop's pieces for an attack that trains itself (`augment`, `schedule`, `set_train_mode`).
"""
from .data import ImageSet, split, to_float, to_uint8
from .models import Classifier
from .plugins import Attack, Context, Defense, DefenseOutput, Poisoning
from .scenario import AttackBudget, Augment, Recipe
from .training import augment, embeddings, schedule, set_train_mode

__all__ = ["Attack", "AttackBudget", "Augment", "Classifier", "Context", "Defense", "DefenseOutput", "ImageSet",
           "Poisoning", "Recipe", "augment", "embeddings", "schedule", "set_train_mode", "split", "to_float",
           "to_uint8"]
