"""Migrate result files from version 1 to version 2 (benchmark/resultfile.py), in place. One-off; idempotent.

    python ci/migrate_results_v2.py leaderboard/results [--code-moved-at COMMIT]

What changes in each file:
- `schema: 2`; `role` (backdoored / null-attack / clean-upstream) replaces `control: true`, `attack.null` and the
  'clean-upstream' pseudo-attack (whose `attack` becomes null);
- `defense.position` is recorded (the registry's class when the defense is known, else read from the metrics'
  shape, which is how version 1 readers guessed it);
- `upstream_build`: which build of the clean upstream the cell descends from, inferred below from the evidence a
  version 1 file holds, so that readers no longer infer it;
- `scenario.recipe` is stamped where the file's scenario sha256 is that of a scenario this checkout ships;
- `provenance.git.changed` keeps only code files (result files and docs never changed a number), and `dirty`
  says whether any are left;
- `--code-moved-at COMMIT`: the plugin code hashes of COMMIT's submissions are mapped to those of this checkout's,
  for a commit that moved the submissions without changing what they compute (the move to benchmark.api, audited
  by running every attack and defense before and after on one scenario: identical weights and scores).

Run it once on a whole folder: builds are inferred from the version 1 files it finds, so a folder migrated in
parts would infer each part's builds without the others' evidence.

Builds of a scenario's clean upstream: which trained model each result cell's numbers descend from.

A stage key names a recipe, not a model: the same upstream recipe built again (on other hardware, or after its
store was lost) can give other weights, and every score downstream moves with them: clean accuracies, a
detector's model score. Aggregates that compare cells (the headline's clean CAs, model-level detection) must
therefore know the build of each cell. Evidence, strongest first:

- the upstream weights' sha256 (`weights.upstream`, files since 2026-11-28): one build per sha. Two shas are never
  joined, even at an equal clean accuracy;
- the build event: the upstream stage's wall time (`wall_time_s.upstream`), which the store keeps with the stage
  and every cell that reused it copies, so cells sharing it share the model. An event takes the sha its cells
  name; else its clean upstream CA decides: the build of the one sha reporting that CA on the same hardware (any
  hardware the event's cells ran on), or else the sha-less builds of that CA on that hardware (an equal accuracy
  on thousands of test images: the same
  recipe rebuilt deterministically on the same kind of machine). An event whose cells name two shas or two CAs
  proves nothing (two builds that happened to take the same seconds): its cells are placed as if it were absent;
- neither (files older than both): the cell's own clean upstream CA, as for an event; else (a control or failed
  cell) the hardware it ran on, when exactly one build was seen there; a cell that records no hardware at all
  joins the only build of the scenario, if there is one.

A cell none of this places is its own 'build unknown (<hardware>)': an aggregate keeps it apart rather than guess.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from io import BytesIO
from pathlib import Path
from typing import Optional

from benchmark.provenance import code_changes, hardware_label
from benchmark.registry import Registry, source_hash

UNKNOWN = "build unknown"
NO_HARDWARE = "?, ? cores"  # hardware_label of a file without provenance


def upstream_ca(cell: dict) -> Optional[float]:
    """The clean upstream's CA as the cell reports it (None in control and failed cells)."""
    return (((cell.get("metrics") or {}).get("upstream") or {}).get("clean") or {}).get("ca")


def _events(shas, events, cas, hws) -> dict:
    """Each unambiguous build event -> ("sha", sha), ("ca", {(hardware, ca)}) or None (known only from controls),
    from the cells that report them."""
    seen = defaultdict(lambda: (set(), set()))
    for s, e, ca, h in zip(shas, events, cas, hws):
        if e is not None:
            ss, hcas = seen[e]
            if s:
                ss.add(s)
            if ca is not None:
                hcas.add((h, ca))
    out = {}
    for e, (ss, hcas) in seen.items():
        if len(ss) > 1 or len({ca for _, ca in hcas}) > 1:
            continue  # two builds under one wall time: no evidence either way
        out[e] = ("sha", *ss) if ss else ("ca", frozenset(hcas)) if hcas else None
    return out


def upstream_build_keys(cells: list[dict]) -> list[tuple]:
    """The build of the clean upstream each cell descends from, as a hashable key aligned with `cells` (one
    scenario's): ('sha', sha256), ('ca', hardware, ca), ('event', seconds) or ('unknown', hardware). The same
    answer in any file order."""
    shas = [(c.get("weights") or {}).get("upstream") for c in cells]
    events = [(c.get("wall_time_s") or {}).get("upstream") for c in cells]
    cas = [upstream_ca(c) for c in cells]
    hws = [hardware_label(c) for c in cells]
    event = _events(shas, events, cas, hws)
    evidence = []  # per cell: ("sha", s), ("ca", {(hardware, ca)}), ("event", e) or None
    for s, e, ca, h in zip(shas, events, cas, hws):
        if s:
            evidence.append(("sha", s))
        elif e in event:
            evidence.append(event[e] or ("event", e))
        elif ca is not None:
            evidence.append(("ca", frozenset({(h, ca)})))
        else:
            evidence.append(None)
    shas_of = defaultdict(set)  # (hardware, CA) -> the shas reported with it (the cell's own or its event's)
    for ev, ca, h in zip(evidence, cas, hws):
        if ev and ev[0] == "sha" and ca is not None:
            shas_of[(h, ca)].add(ev[1])
    keys = []
    for ev in evidence:
        if ev and ev[0] == "ca":
            # the build of the one sha this CA was reported with on the same hardware (any hardware the event's
            # cells ran on), else the sha-less build of that CA, keyed by its first hardware alphabetically
            found = set().union(*(shas_of[p] for p in ev[1]))
            ev = ("sha", *found) if len(found) == 1 else ("ca", *min(ev[1]))
        keys.append(ev)
    seen = defaultdict(set)
    for k, h in zip(keys, hws):
        if k:
            seen[h].add(k)
    every = set().union(*seen.values())
    for i, (k, h) in enumerate(zip(keys, hws)):
        if k is None:
            near = every if h == NO_HARDWARE else seen.get(h, set())
            keys[i] = next(iter(near)) if len(near) == 1 else ("unknown", h)
    return keys


def build_names(cells: list[dict]) -> list[Optional[str]]:
    """`upstream_build_keys` as the strings version 2 records: the weights' sha256 where known, else a
    description unique to the key."""
    def name(k, exact):
        if k[0] == "sha":
            return k[1]
        if k[0] == "ca":
            return f"{k[1]}, upstream CA {repr(k[2]) if exact else format(k[2], '.4f')} (weights not recorded)"
        if k[0] == "event":
            return f"upstream built in {repr(k[1]) if exact else format(k[1], '.0f')} s (weights not recorded)"
        return f"{UNKNOWN} ({k[1]})"
    keys = upstream_build_keys(cells)
    short = {k: name(k, False) for k in set(keys)}
    clash = {n for n in short.values() if list(short.values()).count(n) > 1}
    return [short[k] if short[k] not in clash else name(k, True) for k in keys]


def role(r: dict) -> str:
    if r.get("control"):
        return "clean-upstream"
    return "null-attack" if (r.get("attack") or {}).get("null") else "backdoored"


def position(d: dict, metrics: Optional[dict], registry: Registry) -> str:
    try:
        return registry.plugin_class("defense", d["name"]).position
    except Exception:  # a defense this checkout does not have: the shape of its scores says
        return "data" if "sample_auroc" in ((metrics or {}).get("defense") or {}) else "model"


def hashes_at(commit: str) -> dict[tuple[str, str], str]:
    """(kind, name) -> code hash of each submission as it was at `commit`."""
    raw = subprocess.run(["git", "archive", commit, "submissions"], capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        tarfile.open(fileobj=BytesIO(raw)).extractall(tmp, filter="data")
        old = Registry([Path(tmp) / "submissions"], entry_points=False)
        return {(k, n): source_hash(Path(old.manifest(k, n).folder))
                for k in ("attack", "defense") for n in old.names(k)}


def to_v2(r: dict, build: Optional[str], registry: Registry, recipes: dict, moved: dict) -> dict:
    r = json.loads(json.dumps(r))
    r["schema"] = 2
    r["role"] = role(r)
    r.pop("control", None)
    if r["role"] == "clean-upstream":
        r["attack"] = None
    else:
        r["attack"].pop("null", None)
        r["attack"].setdefault("code", None)
        r["attack"].setdefault("info", None)
    if r.get("defense"):
        r["defense"]["position"] = position(r["defense"], r.get("metrics"), registry)
        r["defense"].setdefault("code", None)
    for kind in ("attack", "defense"):
        p = r.get(kind)
        if p and p.get("code") and moved.get((kind, p["name"]), (None,))[0] == p["code"]:
            p["code"] = moved[(kind, p["name"])][1]
    sc = r["scenario"]
    if not sc.get("recipe"):
        sc["recipe"] = recipes.get(sc.get("sha256"))
    sc.setdefault("sha256", None)
    r.setdefault("weights", {})
    r["upstream_build"] = build
    git = r["provenance"]["git"]
    if "changed" in git:
        git["changed"] = code_changes(git["changed"])
        git["dirty"] = bool(git["changed"])
    return r


def migrate(root: Path, registry: Registry, moved_at: Optional[str] = None) -> dict:
    from benchmark.gridfile import known_scenarios
    from benchmark.resultfile import Result

    recipes = {s.sha256: s.recipe for _, s in known_scenarios()}
    moved = {}
    if moved_at:
        before = hashes_at(moved_at)
        moved = {key: (old, registry.code_hash(*key)) for key, old in before.items()
                 if key[1] in registry.names(key[0])}
    files = sorted(Path(root).rglob("*.json"))
    by_scenario = defaultdict(list)
    counts = {"migrated": 0, "already version 2": 0}
    for f in files:
        r = json.loads(f.read_text())
        if r.get("schema") == 2:
            counts["already version 2"] += 1
            continue
        by_scenario[(r["scenario"]["name"], r["scenario"]["version"])].append((f, r))
    for group in by_scenario.values():
        cells = [r for _, r in group]
        for (f, r), build in zip(group, build_names(cells)):
            new = Result.from_dict(to_v2(r, build, registry, recipes, moved), str(f))  # typed and validated
            f.write_text(new.dumps())
            counts["migrated"] += 1
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", default="leaderboard/results")
    ap.add_argument("--code-moved-at", metavar="COMMIT",
                    help="map the plugin code hashes of this commit's submissions to this checkout's")
    args = ap.parse_args(argv)
    counts = migrate(Path(args.root), Registry(), args.code_moved_at)
    print(", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
