"""Result files: validation against the shipped JSON Schema, loading, and aggregation over seeds."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .builds import upstream_build_labels, upstream_builds
from .errors import BenchError
from .metrics import mean_ci, model_detection

SCHEMA = json.loads((resources.files("benchmark") / "schemas" / "result.schema.json").read_text())


def validate(result: dict, where: str = "result") -> None:
    """Raise BenchError listing every schema violation with its JSON path."""
    import jsonschema

    v = jsonschema.Draft202012Validator(SCHEMA)
    errors = []
    for e in v.iter_errors(result):
        while e.context:  # an allOf/oneOf failure: report its most specific cause
            e = jsonschema.exceptions.best_match(e.context)
        errors.append(e)
    errors.sort(key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [f"  at {'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors[:10]]
        raise BenchError(f"{where}: does not match the result schema (benchmark/schemas/result.schema.json):\n"
                         + "\n".join(lines))


def load(root: Path) -> list[dict]:
    """Every result file under root, validated; each gets a `_path` (relative to root)."""
    root = Path(root)
    if not root.is_dir():
        raise BenchError(f"{root}: no such results folder; pass --results with the folder your runs wrote "
                         "(bdbench run/grid --results), e.g. leaderboard/results in a checkout")
    out = []
    for p in sorted(root.rglob("*.json")):
        try:
            r = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise BenchError(f"{p}: not valid JSON: {e}") from None
        validate(r, str(p))
        r["_path"] = p.relative_to(root).as_posix()
        out.append(r)
    return out


def scenario_key(r: dict) -> tuple[str, int]:
    return r["scenario"]["name"], r["scenario"]["version"]


@dataclass
class Stat:
    """Mean and 95% half-width over seeds."""
    values: list = field(default_factory=list)

    @property
    def mean(self):
        return mean_ci(self.values)[0] if self.values else None

    @property
    def half(self):
        return mean_ci(self.values)[1] if len(self.values) > 1 else None

    def add(self, v):
        if v is not None:
            self.values.append(v)

    def overlaps(self, other: "Stat") -> bool | None:
        """Whether the two 95% intervals overlap; None when either has under two seeds (no interval to compare)."""
        a, b = self.half, other.half
        if a is None or b is None:
            return None
        return abs(self.mean - other.mean) <= a + b


def _stats(rows: list[dict], getter) -> Stat:
    s = Stat()
    for r in rows:
        try:
            s.add(getter(r))
        except (KeyError, TypeError):
            pass
    return s


def is_control(c: dict) -> bool:
    return bool(c.get("control"))


def gives_model_score(c: dict) -> bool:
    """A finished cell of an attack that plants a backdoor, where the defense gave a model score: such a
    defense needs the controls (clean-upstream and null-attack cells) that model-level detection compares with."""
    m = ((c.get("metrics") or {}).get("defense") or {})
    return not is_control(c) and not c["attack"].get("null") and c["status"] == "ok" and \
        (m.get("model_score") is not None or "model_score" in (m.get("nonfinite") or {}))


def unsandboxed(cells: list[dict]) -> dict[str, int]:
    """How many cells' defenses ran outside the sandbox, by how ('process', 'none'); files written before the
    sandbox existed (2026-12-07) do not say and are not counted."""
    return dict(sorted(Counter(c["provenance"]["isolation"] for c in cells
                               if (c.get("provenance") or {}).get("isolation") in ("process", "none")).items()))


def scoring_defenses(folder: Path, defense_ids: list[str]) -> list[str]:
    """Those of `defense_ids` that gave a model score (gives_model_score) in a result file of a scenario's results
    `folder`: read from the files, so a grid's separate tasks agree on which controls to run."""
    return [d for d in defense_ids
            if any(gives_model_score(json.loads(f.read_text())) for f in Path(folder).glob(f"*/{d}/seed-*.json"))]


def _detection_groups(cells: list[dict]) -> dict:
    """(defense id, build label) -> (backdoored scores, {negative kind: scores}) over cells with a defense."""
    by = defaultdict(lambda: ([], {"clean-upstream": [], "null-injection": []}))
    for c, build in zip(cells, upstream_build_labels(cells)):
        if c["defense"] is None:
            continue
        pos, neg = by[(c["defense"]["id"], build)]
        m = (c.get("metrics") or {}).get("defense") or {}
        score = m.get("model_score") if c["status"] == "ok" else None
        if is_control(c):
            neg["clean-upstream"].append(score)
        elif c["attack"].get("null"):
            neg["null-injection"].append(score)
        else:
            pos.append(score)
    return by


def _several_builds(groups: dict) -> bool:
    """Whether the cells with a defense (`_detection_groups`) descend from more than one build."""
    return len({build for _, build in groups}) > 1


def _comparable(pos: list, negs: list) -> bool:
    return bool(pos) and bool(negs) and not all(v is None for v in pos + negs)


def model_detection_rows(cells: list[dict]) -> list[dict]:
    """Model-level detection per defense that gives model scores, over one scenario's cells: AUROC / AUPR / TPR at
    5% FPR of its scores on the models transferred from backdoored upstreams (every attack x seed) against the
    negatives: models transferred from the clean upstream (control cells) and from null-attack upstreams (the same
    injection fine-tuning without poison). `by_negative` gives the AUROC against each kind alone. A failed cell or
    a missing score counts 0.5 (see metrics). Positives and negatives are compared only within one build of the
    clean upstream (builds.upstream_build_labels): a model score shifts with the clean model every transfer
    descends from, so pooling builds would measure the hardware as much as the backdoor. One row per defense and
    build that has both positives and negatives; `build` names it whenever the cells with a defense span several
    builds (else None; builds are told over all the cells). Cells of a build that gives no row:
    `model_detection_left_out`."""
    rows, groups = [], _detection_groups(cells)
    for (d, build), (pos, neg) in sorted(groups.items()):
        negs = neg["clean-upstream"] + neg["null-injection"]
        if _comparable(pos, negs):
            rows.append({"defense": d, "build": build, **model_detection(pos, negs),
                         "by_negative": {k: model_detection(pos, v)["auroc"] for k, v in neg.items() if v}})
    if not _several_builds(groups):
        for r in rows:
            r["build"] = None
    return rows


def model_detection_left_out(cells: list[dict]) -> list[dict]:
    """The cells model-level detection cannot use, per defense and build: a build holding no backdoored or no clean
    transfers for that defense (e.g. controls of a build no attack used), or only missing scores. Each:
    {defense, build, backdoored, negatives (cell counts), why}, for defenses that give a model score in some cell. A
    defense with scores but no row appears only here. Empty when the cells hold one build: then a defense without
    both kinds of transfer has no detection to leave anything out of."""
    groups = _detection_groups(cells)
    if not _several_builds(groups):
        return []
    scoring = {d for (d, _), (pos, neg) in groups.items()
               if any(v is not None for v in pos + neg["clean-upstream"] + neg["null-injection"])}
    out = []
    for (d, build), (pos, neg) in sorted(groups.items()):
        negs = neg["clean-upstream"] + neg["null-injection"]
        if d in scoring and not _comparable(pos, negs):
            why = ("no negative transfers" if pos and not negs else "no backdoored transfers" if negs and not pos
                   else "no model scores")
            out.append({"defense": d, "build": build, "backdoored": len(pos), "negatives": len(negs), "why": why})
    return out


def attack_rows(cells: list[dict]) -> list[dict]:
    """One row per attack: CA and ASR before transfer, after transfer, the clean-upstream baseline, and the
    best detection AUROC any defense reaches against it (lower = stealthier)."""
    by = defaultdict(list)
    for c in cells:
        if not is_control(c) and not c["attack"].get("null"):
            by[c["attack"]["id"]].append(c)
    rows = []
    for attack, cs in sorted(by.items()):
        base = [c for c in cs if c["defense"] is None and c["status"] == "ok"]
        aurocs = defaultdict(Stat)
        for c in cs:
            if c["defense"] is not None and c["status"] == "ok":
                aurocs[c["defense"]["id"]].add(c["metrics"]["defense"].get("input_auroc"))
        best = max(((d, s) for d, s in aurocs.items() if s.values), key=lambda t: t[1].mean, default=(None, Stat()))
        rows.append({
            "attack": attack, "name": cs[0]["attack"]["name"], "seeds": sorted({c["seed"] for c in base}),
            "ca": _stats(base, lambda r: r["metrics"]["upstream"]["backdoored"]["ca"]),
            "asr_upstream": _stats(base, lambda r: r["metrics"]["upstream"]["backdoored"]["asr"]),
            "asr_transfer": _stats(base, lambda r: r["metrics"]["transfer"]["backdoored"]["asr"]),
            "asr_baseline": _stats(base, lambda r: r["metrics"]["transfer"]["clean"]["asr"]),
            "ca_transfer": _stats(base, lambda r: r["metrics"]["transfer"]["backdoored"]["ca"]),
            "best_auroc": best[1], "best_auroc_by": best[0],
            "failed": sum(c["status"] != "ok" for c in cs if c["defense"] is None),
        })
    return rows


IMPLANTED_ASR = 0.5
"""A backdoor counts as implanted when its mean ASR before transfer (the backdoored upstream on its own triggered
test set, same label space) reaches this; below it the lift cannot say whether a backdoor survives transfer,
because there was none to survive, and the headline marks the entry instead of reading it as removal."""


def transfers(c: dict) -> bool:
    """Whether a cell's scenario transfers the delivered model to a downstream task (protocol none does not)."""
    return c["scenario"].get("protocol", "full") != "none"


def headline(cells: list[dict]) -> dict:
    """Does the backdoor survive transfer, scenario by scenario? One row per scenario (name, version), one column
    per attack; each entry holds, over the seeds of its no-defense cells: the ASR before transfer (same label
    space), the ASR after transfer, the clean-upstream baseline and the lift = ASR after transfer minus the
    baseline, paired by seed (so the interval is that of the difference), and whether the backdoor was implanted
    upstream at all (IMPLANTED_ASR). Rows also carry `builds`, the builds of the clean upstream those cells
    descend from (builds.upstream_builds; one unless the scenario was resumed elsewhere or its store lost), each
    with its clean upstream CA and the CA of the models transferred from it (one value per seed); `ca_upstream`
    holds one CA per build and `ca_transfer` pools the builds' per-seed values (shown per build when several)."""
    def counted(c):
        return c["defense"] is None and c["status"] == "ok" and not is_control(c) and not c["attack"].get("null")
    cells = [c for c in cells if transfers(c)]  # the calibration scenarios have no transfer to survive
    rows = []
    for (name, version), scs in by_scenario(cells).items():
        by_attack = defaultdict(list)
        for c in filter(counted, scs):
            by_attack[c["attack"]["id"]].append(c)
        if not by_attack:
            continue
        builds = [{**b, "ca_transfer": _stats(b["ca_transfer"], lambda t: t[1])}
                  for b in upstream_builds(scs, chosen=counted)]
        entries = {a: {"asr_upstream": _stats(cs, lambda c: c["metrics"]["upstream"]["backdoored"]["asr"]),
                       "asr_transfer": _stats(cs, lambda c: c["metrics"]["transfer"]["backdoored"]["asr"]),
                       "asr_baseline": _stats(cs, lambda c: c["metrics"]["transfer"]["clean"]["asr"]),
                       "lift": _stats(cs, lambda c: c["metrics"]["transfer"]["backdoored"]["asr"]
                                      - c["metrics"]["transfer"]["clean"]["asr"]),
                       "seeds": len(cs)} for a, cs in by_attack.items()}
        for e in entries.values():
            e["implanted"] = e["asr_upstream"].mean is not None and e["asr_upstream"].mean >= IMPLANTED_ASR
        rows.append({"scenario": name, "version": version, "key": f"{name}-v{version}", "entries": entries,
                     "builds": builds, "ca_upstream": _stats(builds, lambda b: b["ca_upstream"]),
                     "ca_transfer": _stats([v for b in builds for v in b["ca_transfer"].values], lambda v: v)})
    return {"attacks": sorted({a for r in rows for a in r["entries"]}), "rows": rows}


# Harness changes that altered what some committed cells would measure, without changing any plugin's code (so the
# code hashes cannot tell): the site marks the rows whose cells finished before the fix. See CHANGELOG.md.
HARNESS_CHANGES = [
    {"attack": "random-backdoor", "before": "2026-12-07T14:30:00Z",
     "why": "computed before the scoring fix of 2026-12-07: the defended scores used other random triggers than the "
            "undefended ones (a defense that changes nothing moved ASR by up to 5 points); recompute to compare"},
]


def superseded(c: dict) -> list[str]:
    """Why a cell's scores predate a harness fix (HARNESS_CHANGES), if they do."""
    return [ch["why"] for ch in HARNESS_CHANGES
            if c["attack"].get("name") == ch["attack"] and c.get("finished", "") < ch["before"]]


def stale(rows: list[dict], registry) -> None:
    """Mark each defense row whose cells ran an earlier version of the defense's code (`row['stale']`)."""
    for r in rows:
        try:
            now = registry.code_hash("defense", r["name"])
        except Exception:  # not a shipped or installed defense: nothing to compare with
            now = None
        r["stale"] = now is not None and any(code != now for code in r["codes"])


def defense_rows(cells: list[dict]) -> list[dict]:
    """One row per (defense, attack): scores after the defense, their change, DER, AUROC, wall time."""
    by = defaultdict(list)
    for c in cells:
        if c["defense"] is not None and not is_control(c) and not c["attack"].get("null"):
            by[(c["defense"]["id"], c["attack"]["id"])].append(c)
    rows = []
    for (defense, attack), cs in sorted(by.items()):
        ok = [c for c in cs if c["status"] == "ok"]
        d = lambda k: (lambda r: r["metrics"]["defense"][k])  # noqa: E731
        b = lambda k: (lambda r: r["metrics"]["transfer"]["backdoored"][k])  # noqa: E731
        row = {"defense": defense, "name": cs[0]["defense"]["name"], "attack": attack,
               "seeds": sorted({c["seed"] for c in ok}), "failed": len(cs) - len(ok),
               "errors": sorted({f"{c['error']['type']}: {c['error']['message']}" for c in cs if c["status"] != "ok"}),
               "wall": _stats(ok, lambda r: r["wall_time_s"]["defense"])}
        for k in ("ca", "asr", "ra", "der", "input_auroc", "model_score", "sample_auroc", "sample_aupr",
                  "sample_tpr_at_5fpr", "input_aupr", "input_tpr_at_5fpr"):
            row[k] = _stats(ok, d(k))
        row["nonfinite"] = sum(bool(c["metrics"]["defense"].get("nonfinite")) for c in ok)
        row["codes"] = sorted({c["defense"].get("code") for c in ok if c["defense"].get("code")})
        row["affected"] = sorted({why for c in ok for why in superseded(c)})
        row["position"] = ("data" if any("sample_auroc" in (c["metrics"] or {}).get("defense", {}) for c in ok)
                           else "model")
        for k in ("ca", "asr", "ra"):
            row[f"d_{k}"] = _stats(ok, lambda r, k=k: r["metrics"]["defense"][k]
                                   - r["metrics"]["transfer"]["backdoored"][k])
            row[f"before_{k}"] = _stats(ok, b(k))
        rows.append(row)
    return rows


def by_scenario(cells: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """Cells grouped by (scenario name, version): versions never mix."""
    out = defaultdict(list)
    for c in cells:
        out[scenario_key(c)].append(c)
    return dict(sorted(out.items()))


# where a result file gives the clean accuracy of each stage's model: a function of its weights alone (an ASR
# also depends on the cell's attack)
STAGE_CA = {"upstream": ("upstream", "clean"), "backdoor": ("upstream", "backdoored"),
            "downstream_clean": ("transfer", "clean"), "downstream": ("transfer", "backdoored"),
            "defense": ("defense",)}


def retrained(cells: list[dict]) -> dict[str, int]:
    """Stage keys whose model differs between these cells, as {key: how many versions}. A key names a stage's
    inputs, so one key is one recipe; but a stage built again (on another machine, or after its store was lost)
    need not give the same weights: training is not bit-identical across CPUs or GPUs. Two versions differ when
    their files name different weights (sha256, recorded since 2026-11-28) or give the stage's model a different
    clean accuracy (older files)."""
    seen = defaultdict(lambda: (set(), set()))  # key -> (weights sha256s, clean accuracies of the stage's model)
    for c in cells:
        for stage, key in (c.get("artifacts") or {}).items():
            shas, cas = seen[key]
            if (c.get("weights") or {}).get(stage):
                shas.add(c["weights"][stage])
            m = c.get("metrics")
            for k in (*STAGE_CA.get(stage, ("-",)), "ca"):
                m = m.get(k) if isinstance(m, dict) else None
            if m is not None:
                cas.add(m)
    return {k: max(len(a), len(b)) for k, (a, b) in sorted(seen.items()) if max(len(a), len(b)) > 1}
