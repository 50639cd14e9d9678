"""Builds of a scenario's clean upstream: which trained model each result cell's numbers descend from.

A stage key names a recipe, not a model: the same upstream recipe built again (on other hardware, or after its
store was lost) can give other weights, and every score downstream moves with them: clean accuracies, a
detector's model score. Aggregates that compare cells (the headline's clean CAs, model-level detection) must
therefore know the build of each cell. Evidence, strongest first:

- the upstream weights' sha256 (`weights.upstream`, files since 2026-11-28): one build per sha. Two shas are never
  joined, even at an equal clean accuracy;
- the build event: the upstream stage's wall time (`wall_time_s.upstream`), which the store keeps with the stage
  and every cell that reused it copies, so cells sharing it share the model. An event takes the sha any of its
  cells names; else its clean upstream CA decides: the build of the one sha reporting that CA, or else the
  sha-less builds of that CA (an equal accuracy on thousands of test images: the same recipe rebuilt
  deterministically on the same kind of machine);
- neither (files older than both): the cell's own clean upstream CA, as for an event; else (a control or failed
  cell) the hardware it ran on, when exactly one build was seen there, or else the only build of all.

A cell none of this places is labelled 'build unknown (<hardware>)': an aggregate keeps it apart rather than guess.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Optional

from .provenance import hardware_label

UNKNOWN = "build unknown"


def upstream_ca(cell: dict) -> Optional[float]:
    """The clean upstream's CA as the cell reports it (None in control and failed cells)."""
    return (((cell.get("metrics") or {}).get("upstream") or {}).get("clean") or {}).get("ca")


def _keys(cells: list[dict]) -> list[tuple]:
    shas = [(c.get("weights") or {}).get("upstream") for c in cells]
    events = [(c.get("wall_time_s") or {}).get("upstream") for c in cells]
    cas = [upstream_ca(c) for c in cells]
    event_sha, event_ca = {}, {}
    for s, e, ca in sorted(zip(shas, events, cas), key=str):  # sorted: the same answer in any file order
        if e is not None:
            if s:
                event_sha.setdefault(e, s)
            if ca is not None:
                event_ca.setdefault(e, ca)
    shas_of_ca = defaultdict(set)
    for s, e, ca in zip(shas, events, cas):
        s, ca = s or event_sha.get(e), ca if ca is not None else event_ca.get(e)
        if s and ca is not None:
            shas_of_ca[ca].add(s)

    def by_ca(ca):
        return ("sha", *shas_of_ca[ca]) if len(shas_of_ca[ca]) == 1 else ("ca", ca)
    keys = []
    for s, e, ca in zip(shas, events, cas):
        if s or e in event_sha:
            keys.append(("sha", s or event_sha[e]))
        elif e in event_ca or ca is not None:
            keys.append(by_ca(event_ca[e] if e in event_ca else ca))
        elif e is not None:
            keys.append(("event", e))  # an event no cell gives a sha or CA for: a build of its own
        else:
            keys.append(None)
    hws = [hardware_label(c) for c in cells]
    seen = defaultdict(set)
    for k, h in zip(keys, hws):
        if k:
            seen[h].add(k)
    every = set().union(*seen.values())
    for i, (k, h) in enumerate(zip(keys, hws)):
        if k is None:
            near = seen.get(h) or every
            keys[i] = next(iter(near)) if len(near) == 1 else ("unknown", h)
    return keys


def upstream_build_labels(cells: list[dict]) -> list[str]:
    """The build of the clean upstream each cell descends from (module docstring), aligned with `cells`, which
    should be one scenario's. Labels: 'upstream <first 8 hex digits of the sha>' for a build whose weights are
    known; else the hardware most of its cells ran on (ties: alphabetical), with the upstream CA (or the stage's
    build seconds) appended when two builds would otherwise share a label; 'build unknown (<hardware>)'."""
    keys = _keys(cells)
    hw = defaultdict(Counter)
    for k, c in zip(keys, cells):
        hw[k][hardware_label(c)] += 1
    name = {}
    for k, counts in hw.items():
        if k[0] == "sha":
            name[k] = f"upstream {k[1][:8]}"
        elif k[0] == "unknown":
            name[k] = f"{UNKNOWN} ({k[1]})"
        else:
            name[k] = min(counts, key=lambda h: (-counts[h], h))
    clash = Counter(name.values())
    for k in name:
        if clash[name[k]] > 1 and k[0] in ("ca", "event"):
            name[k] += f", upstream CA {k[1]:.4f}" if k[0] == "ca" else f", upstream built in {k[1]:.0f} s"
    return [name[k] for k in keys]


def upstream_builds(cells: list[dict], chosen=None) -> list[dict]:
    """The builds of one scenario's clean upstream used by the `chosen(cell)` cells (default: every cell that
    reports the clean upstream CA), in the order first finished. Each holds its `label`
    (`upstream_build_labels`, computed over all `cells`), the clean upstream CA, the CA of the models the victim
    transferred from it (one value per seed, from the first cell finished), the attacks of its chosen cells and the
    hardware most of them ran on. A scenario computed in one place has one build."""
    chosen = chosen or (lambda c: upstream_ca(c) is not None)
    by = {}
    pairs = sorted(zip(cells, upstream_build_labels(cells)), key=lambda t: t[0].get("finished") or "")
    for c, label in pairs:
        if not chosen(c):
            continue
        b = by.setdefault(label, {"cas": Counter(), "per_seed": {}, "attacks": set(), "hardware": Counter()})
        if upstream_ca(c) is not None:
            b["cas"][upstream_ca(c)] += 1
        ca_down = (((c.get("metrics") or {}).get("transfer") or {}).get("clean") or {}).get("ca")
        if ca_down is not None:
            b["per_seed"].setdefault(c["seed"], ca_down)
        b["attacks"].add(c["attack"]["id"])
        b["hardware"][hardware_label(c)] += 1
    return [{"label": label, "ca_upstream": b["cas"].most_common(1)[0][0] if b["cas"] else None,
             "ca_transfer": sorted(b["per_seed"].items()), "attacks": sorted(b["attacks"]),
             "hardware": min(b["hardware"], key=lambda h: (-b["hardware"][h], h))} for label, b in by.items()]
