"""Fine-tuning on the clean budget: the simplest mitigation, and the baseline every defense must beat."""
from benchmark.api import Augment, Defense, DefenseOutput, Recipe


class FineTune(Defense):
    def run(self, model, clean, ctx):
        p = self.params
        recipe = Recipe(epochs=p["epochs"], lr=p["lr"], batch_size=p["batch_size"], weight_decay=p["weight_decay"],
                        augment=Augment(hflip=p["hflip"], crop_pad=p["crop_pad"]))
        return DefenseOutput(model=ctx.train(model, clean, recipe, desc="finetune"))
