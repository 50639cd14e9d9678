"""Networks that timm does not ship, registered with timm's `@register_model` so that `timm.create_model` (and so
every scenario's `arch`) builds them by name. Importing this package registers them; `benchmark.models` does."""
from . import preact_resnet  # noqa: F401  (registers preact_resnet18)
