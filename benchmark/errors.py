"""Errors a user can act on: each names the file, the key and the fix."""
from __future__ import annotations


class BenchError(Exception):
    """Base class for every error bdbench reports to a user (the CLI prints it and exits 2)."""


class ConfigError(BenchError):
    """A scenario or manifest that does not validate."""

    def __init__(self, file, key: str, message: str):
        self.file, self.key, self.message = str(file), key, message
        super().__init__(f"{self.file}: key '{key}': {message}")


class UnknownPluginError(BenchError):
    def __init__(self, kind: str, name: str, known: list[str], where: str | None = None):
        self.kind, self.name, self.known = kind, name, sorted(known)
        place = f"{where}: " if where else ""
        super().__init__(
            f"{place}unknown {kind} '{name}'. Known {kind}s: {', '.join(self.known) or '(none)'}. "
            f"Add a folder submissions/{kind}s/{name}/ with a submission.yaml, or fix the name."
        )


class CheckpointError(BenchError):
    """A stored artifact that is missing, tampered with or not safetensors."""


class DivergedError(BenchError):
    """A model whose weights or outputs are not finite: the training that made it diverged. Metrics computed from
    it would be artefacts (an argmax over NaN logits is class 0, which reads as a perfect attack on target 0)."""
