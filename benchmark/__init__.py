"""bdbench: a benchmark of backdoor attacks and defenses under transfer learning."""
__version__ = "0.1.0"

from .data import ImageSet  # noqa: E402
from .plugins import Attack, Context, Defense, DefenseOutput, Poisoning  # noqa: E402

__all__ = ["Attack", "Context", "Defense", "DefenseOutput", "ImageSet", "Poisoning", "__version__"]
