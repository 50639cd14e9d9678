"""bdbench: a benchmark of backdoor attacks and defenses under transfer learning. Submissions import from
benchmark.api (the plugin contract); the names below are kept for older submissions."""
__version__ = "0.1.0"

from .api import Attack, Context, Defense, DefenseOutput, ImageSet, Poisoning  # noqa: E402

__all__ = ["Attack", "Context", "Defense", "DefenseOutput", "ImageSet", "Poisoning", "__version__"]
