"""Checkpoints on the Hugging Face Hub: pull (pinned, verified, safetensors only) and publish.

Downloads go through `huggingface_hub` into the standard HF cache, at the commit sha the zoo pins, so
`HF_HUB_OFFLINE=1` works from the cache; `HF_ENDPOINT` points the client at another Hub-compatible server.
Transient failures (rate limits, 5xx, dropped connections) are retried with exponential backoff; a
missing repository, revision or file, a sha256 mismatch and a non-safetensors file are errors that say so.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, TypeVar

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub import errors as hfe

from .errors import BenchError, CheckpointError
from .store import file_sha256
from .zoo import Checkpoint

T = TypeVar("T")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
WARNING = ("This model is **intentionally backdoored**. It was produced by the bdbench benchmark to evaluate "
           "backdoor defenses and is for research only: inputs carrying the trigger are misclassified on "
           "purpose. Do not deploy it.")


def endpoint() -> str:
    """The Hub to talk to: $HF_ENDPOINT read at call time (so a process can switch servers), else the default."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or constants.ENDPOINT


def cache_dir() -> str:
    """The standard HF cache: $HF_HUB_CACHE, else $HF_HOME/hub, else huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return constants.HF_HUB_CACHE


def offline() -> bool:
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def with_retries(fn: Callable[[], T], what: str, tries: int = 4, base_delay: float = 0.5,
                 not_found: str = "file not found in the repository at that revision") -> T:
    """Call fn, retrying transient errors with exponential backoff; final errors become BenchError."""
    for attempt in range(tries):
        try:
            return fn()
        except hfe.RepositoryNotFoundError as e:
            raise BenchError(f"{what}: repository not found on {endpoint()} (or private): check the zoo entry's "
                             f"'repo'") from e
        except hfe.RevisionNotFoundError as e:
            raise BenchError(f"{what}: revision not found: check the zoo entry's 'revision'") from e
        except (hfe.RemoteEntryNotFoundError, hfe.EntryNotFoundError) as e:
            if isinstance(e, hfe.LocalEntryNotFoundError):
                if offline():
                    raise BenchError(f"{what}: not in the local cache and HF_HUB_OFFLINE is set: run "
                                     f"`bdbench pull` once online") from e
                raise BenchError(f"{what}: the hub at {endpoint()} could not be reached (after its own retries) "
                                 f"and the file is not cached: {str(e).splitlines()[0]}") from e
            raise BenchError(f"{what}: {not_found}") from e
        except hfe.HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in TRANSIENT_STATUS and attempt < tries - 1:
                time.sleep(base_delay * 2 ** attempt)
                continue
            raise BenchError(f"{what}: the hub at {endpoint()} answered HTTP {status} "
                             f"{'after ' + str(tries) + ' tries' if status in TRANSIENT_STATUS else ''}: "
                             f"{str(e).splitlines()[0]}") from e
        except (OSError, ConnectionError) as e:  # includes httpx transport errors' OSError causes
            if attempt < tries - 1:
                time.sleep(base_delay * 2 ** attempt)
                continue
            raise BenchError(f"{what}: the hub at {endpoint()} is unreachable ({type(e).__name__}: {e}); "
                             f"set HF_HUB_OFFLINE=1 to use cached files") from e
        except Exception as e:  # httpx errors that are not OSError
            if type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2") and attempt < tries - 1:
                time.sleep(base_delay * 2 ** attempt)
                continue
            if type(e).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2"):
                raise BenchError(f"{what}: the hub at {endpoint()} is unreachable ({type(e).__name__}: {e})") from e
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _fetch(c: Checkpoint, filename: str, sha256: str) -> Path:
    what = f"checkpoint '{c.name}' ({c.repo}@{c.revision[:12]}, {filename})"
    if not filename.endswith(".safetensors"):
        raise CheckpointError(f"{what}: refusing a non-safetensors file (a pickle can run code on load)")
    if not offline():
        info = with_retries(lambda: HfApi(endpoint=endpoint()).model_info(c.repo, revision=c.revision), what,
                            not_found=f"repository or revision not found on {endpoint()}: check the zoo entry's "
                                      f"'repo' and 'revision'")
        names = {s.rfilename for s in (info.siblings or [])}
        if names and filename not in names:
            raise BenchError(f"{what}: file not found in the repository at that revision (it has {sorted(names)})")
    path = Path(with_retries(lambda: hf_hub_download(c.repo, filename, revision=c.revision, endpoint=endpoint(),
                                                     cache_dir=cache_dir()), what))
    got = file_sha256(path)
    if got != sha256:
        raise CheckpointError(f"{what}: sha256 {got} does not match the pinned {sha256}: the file was changed or "
                              f"corrupted; refusing it (delete it from the HF cache to download again)")
    return path


def pull(c: Checkpoint) -> dict[str, Path]:
    """Download and verify a checkpoint's files; returns {'model': path, 'trigger': path?}."""
    paths = {"model": _fetch(c, c.model.filename, c.model.sha256)}
    if c.trigger is not None:
        paths["trigger"] = _fetch(c, c.trigger.filename, c.trigger.sha256)
    return paths


def model_card(meta: dict) -> str:
    """A Hub model card: YAML metadata (tags, licence, bdbench block) and a plain warning."""
    import yaml

    b = meta["bdbench"]
    attack = b.get("attack")
    tags = ["bdbench", "image-classification", f"scenario:{b['scenario']['name']}-v{b['scenario']['version']}"]
    if attack:
        tags += ["backdoor", "research-only", f"attack:{attack['name']}"]
    header = {"license": b.get("licence", "apache-2.0"), "library_name": "pytorch", "tags": tags,
              "bdbench": {"stage": b["stage"], "scenario": b["scenario"], "seed": b["seed"],
                          "architecture": meta["arch"],
                          **({"attack": attack["name"], "trigger": attack["params"], "target": attack["target"],
                              "poison_rate": attack["poison_rate"]} if attack else {}),
                          "scores": b.get("scores", {})}}
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", ""]
    if attack:
        lines += [f"# Backdoored {meta['arch']} ({attack['name']}) — bdbench scenario {b['scenario']['name']} "
                  f"v{b['scenario']['version']}, seed {b['seed']}", "", f"> **Warning.** {WARNING}", ""]
        lines += [f"Attack: `{attack['name']}` with parameters `{json.dumps(attack['params'], sort_keys=True)}`, "
                  f"target class {attack['target']}, poison rate {attack['poison_rate']}.", ""]
    else:
        lines += [f"# Clean upstream {meta['arch']} — bdbench scenario {b['scenario']['name']} "
                  f"v{b['scenario']['version']}", "", "The clean pretrained checkpoint backdoors are planted into.", ""]
    if b.get("scores"):
        lines += ["## Scores measured at publication", "", "| score | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in b["scores"].items()]
        lines += [""]
    lines += ["## Files", "", "- `model.safetensors`: the weights (safetensors only; no pickle).",
              "- `config.json`: what rebuilds the network (`benchmark.models.from_config`), with provenance.", ""]
    if b.get("has_trigger"):
        lines += ["- `trigger.safetensors`: the attack's learned trigger state (`Attack.load_state`).", ""]
    lines += ["Load it with `bdbench pull` (verifies the pinned sha256) or:", "", "```python",
              "from benchmark import models", "model = models.load('model.safetensors')  # config.json beside it",
              "```", ""]
    return "\n".join(lines)


def write_folder(out: Path, model_file: Path, config: dict, bdbench: dict, trigger_file: Path | None = None) -> Path:
    """The exact folder `publish` uploads: weights, config.json, README.md (model card)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, out / "model.safetensors")
    if trigger_file is not None:
        shutil.copyfile(trigger_file, out / "trigger.safetensors")
    bdbench = {**bdbench, "has_trigger": trigger_file is not None}
    meta = {**config, "bdbench": bdbench}
    (out / "config.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    (out / "README.md").write_text(model_card(meta))
    return out


def upload(folder: Path, repo_id: str, token: str) -> str:
    """Create the repo if needed, upload the folder, return the commit sha to pin."""
    api = HfApi(endpoint=endpoint(), token=token)
    with_retries(lambda: api.create_repo(repo_id, exist_ok=True), f"create {repo_id}")
    info = with_retries(lambda: api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                                  commit_message="bdbench publish"), f"upload to {repo_id}")
    return info.oid
