"""Builds of a scenario's clean upstream: which trained model each result cell's numbers descend from.

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
Identity is the key (`upstream_build_keys`); labels are for display and unique per key.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Optional

from .provenance import hardware_label

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


def _names(key: tuple, hardware: Counter) -> list[str]:
    """Names for one build, coarse to fine; the finest is unique to the key."""
    if key[0] == "sha":
        return [f"upstream {key[1][:n]}" for n in (8, 16, 64)]
    if key[0] == "unknown":
        return [f"{UNKNOWN} ({key[1]})"]
    if key[0] == "ca":
        return [key[1], f"{key[1]}, upstream CA {key[2]:.4f}", f"{key[1]}, upstream CA {key[2]!r}"]
    most = min(hardware, key=lambda h: (-hardware[h], h))  # where most of its cells ran (ties: alphabetical)
    return [most, f"{most}, upstream built in {key[1]:.0f} s", f"{most}, upstream built in {key[1]!r} s"]


def upstream_build_labels(cells: list[dict]) -> list[str]:
    """`upstream_build_keys` in words, one label per key: 'upstream <first 8 hex digits of the sha>' for a build
    whose weights are known; else the hardware its cells ran on, with the upstream CA (or the stage's build
    seconds) appended when two builds would otherwise share a label; 'build unknown (<hardware>)'. Labels that
    would still clash take more digits."""
    keys = upstream_build_keys(cells)
    hardware = defaultdict(Counter)
    for k, c in zip(keys, cells):
        hardware[k][hardware_label(c)] += 1
    names = {k: _names(k, hw) for k, hw in hardware.items()}
    level = dict.fromkeys(names, 0)
    while True:
        label = {k: names[k][level[k]] for k in names}
        clash = Counter(label.values())
        finer = [k for k in names if clash[label[k]] > 1 and level[k] + 1 < len(names[k])]
        if not finer:
            return [label[k] for k in keys]
        for k in finer:
            level[k] += 1


def upstream_builds(cells: list[dict], chosen=None) -> list[dict]:
    """The builds of one scenario's clean upstream used by the `chosen(cell)` cells (default: every cell that
    reports the clean upstream CA), in the order first finished (ties: by label). Each holds its `label`
    (`upstream_build_labels`, computed over all `cells`), the clean upstream CA (None when no chosen cell reports
    it), the CA of the models the victim transferred from it (one value per seed, from the first cell finished),
    the attacks of its chosen cells and the hardware most of them ran on. A scenario computed in one place has one
    build."""
    chosen = chosen or (lambda c: upstream_ca(c) is not None)
    by = {}
    pairs = sorted(zip(cells, upstream_build_labels(cells)), key=lambda t: (t[0].get("finished") or "", t[1]))
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
