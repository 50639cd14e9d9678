"""Aggregation of result files over seeds: the headline, attack and defense rows, model-level detection. Files are
read and written by resultfile (the typed record)."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .metrics import mean_ci, model_detection
from .provenance import hardware_label
from .resultfile import Result, is_sha, load, read_if_valid  # noqa: F401  (load: the results folder, for callers)


def scenario_key(r: Result) -> tuple[str, int]:
    return r.scenario.name, r.scenario.version


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


def _stats(rows: list, getter) -> Stat:
    s = Stat()
    for r in rows:
        try:
            s.add(getter(r))
        except (AttributeError, TypeError):  # a section the cell lacks, or a score it lacks (None) in arithmetic
            pass
    return s


def build_identity(cells: list[Result]) -> dict:
    """upstream_build -> the build it is. A file migrated from version 1 without recorded weights names its build
    by a description; it is the same model as a build named by its weights' sha256 when cells of both name the same
    stored upstream stage (the same artifact key and the same build event, its wall time), as happens when cells
    are added to a scenario from the store that computed it. A cell that failed before the upstream existed (no
    build) joins the only build there is, if there is one."""
    events = defaultdict(set)  # (upstream key, build seconds) -> builds of the cells naming that stored stage
    for c in cells:
        key, wall = c.artifacts.get("upstream"), c.wall_time_s.get("upstream")
        if c.upstream_build and key and wall is not None:
            events[(key, wall)].add(c.upstream_build)
    joined = defaultdict(set)  # description -> the shas it shares a stored stage with
    for builds in events.values():
        shas = {b for b in builds if is_sha(b)}
        for b in builds - shas:
            joined[b] |= shas
    out = {c.upstream_build: c.upstream_build for c in cells}
    out.update({d: next(iter(s)) for d, s in joined.items() if len(s) == 1})
    known = {v for v in out.values() if v is not None}
    if None in out and len(known) == 1:
        out[None] = next(iter(known))
    return out


def build_labels(cells: list[Result]) -> dict:
    """upstream_build -> the label in words of the build it is (build_identity; Result.label_of), unique among
    these cells: two builds whose weights' sha256 share the first 8 hex digits are told with 16, then all 64."""
    ident = build_identity(cells)
    builds = sorted(set(ident.values()), key=lambda b: (b is None, b or ""))
    short = {b: Result.label_of(b) for b in builds}
    label = {}
    for b in builds:
        clash = [o for o in builds if o != b and short[o] == short[b]]
        n = next((n for n in (16, 64) if not any(o[:n] == b[:n] for o in clash)), 64) if clash else 0
        label[b] = f"upstream {b[:n]}" if n else short[b]
    return {b: label[i] for b, i in ident.items()}


def gives_model_score(c: Result) -> bool:
    """A finished cell of an attack that plants a backdoor, where the defense gave a model score: such a
    defense needs the controls (clean-upstream and null-attack cells) that model-level detection compares with."""
    m = c.metrics.defense if c.metrics else None
    return c.role == "backdoored" and c.ok and m is not None and \
        (m.model_score is not None or "model_score" in (m.nonfinite or {}))


def unsandboxed(cells: list[Result]) -> dict[str, int]:
    """How many cells' defenses ran outside the sandbox, by how ('process', 'none'); files written before the
    sandbox existed (2026-12-07) do not say and are not counted."""
    return dict(sorted(Counter(c.provenance.get("isolation") for c in cells
                               if c.provenance.get("isolation") in ("process", "none")).items()))


def scoring_defenses(folder: Path, defense_ids: list[str]) -> list[str]:
    """Those of `defense_ids` that gave a model score (gives_model_score) in a result file of a scenario's results
    `folder`: read from the files, so a grid's separate tasks agree on which controls to run."""
    def scored(f):
        r = read_if_valid(f)
        return r is not None and gives_model_score(r)
    return [d for d in defense_ids if any(scored(f) for f in Path(folder).glob(f"*/{d}/seed-*.json"))]


def _detection_groups(cells: list[Result]) -> dict:
    """(defense id, build label) -> (backdoored scores, {negative kind: scores}) over cells with a defense. Builds
    are told apart by `upstream_build` (labels of two builds could share a sha256 prefix; then they take more)."""
    by = defaultdict(lambda: ([], {"clean-upstream": [], "null-attack": []}))
    label = build_labels(cells)
    for c in cells:
        if c.defense is None:
            continue
        pos, neg = by[(c.defense.id, label[c.upstream_build])]
        score = c.metrics.defense.model_score if c.ok and c.metrics and c.metrics.defense else None
        (pos if c.role == "backdoored" else neg[c.role]).append(score)
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
    clean upstream (the cell's `upstream_build`): a model score shifts with the clean model every transfer
    descends from, so pooling builds would measure the hardware as much as the backdoor. One row per defense and
    build that has both positives and negatives; `build` names it whenever the cells with a defense span several
    builds (else None; builds are told over all the cells). Cells of a build that gives no row:
    `model_detection_left_out`."""
    rows, groups = [], _detection_groups(cells)
    for (d, build), (pos, neg) in sorted(groups.items()):
        negs = neg["clean-upstream"] + neg["null-attack"]
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
               if any(v is not None for v in pos + neg["clean-upstream"] + neg["null-attack"])}
    out = []
    for (d, build), (pos, neg) in sorted(groups.items()):
        negs = neg["clean-upstream"] + neg["null-attack"]
        if d in scoring and not _comparable(pos, negs):
            why = ("no negative transfers" if pos and not negs else "no backdoored transfers" if negs and not pos
                   else "no model scores")
            out.append({"defense": d, "build": build, "backdoored": len(pos), "negatives": len(negs), "why": why})
    return out


def attack_rows(cells: list[Result]) -> list[dict]:
    """One row per attack: CA and ASR before transfer, after transfer, the clean-upstream baseline, and the
    best detection AUROC any defense reaches against it (lower = stealthier)."""
    by = defaultdict(list)
    for c in cells:
        if c.role == "backdoored":
            by[c.attack.id].append(c)
    rows = []
    for attack, cs in sorted(by.items()):
        base = [c for c in cs if c.defense is None and c.ok]
        aurocs = defaultdict(Stat)
        for c in cs:
            if c.defense is not None and c.ok:
                aurocs[c.defense.id].add(c.metrics.defense.input_auroc)
        best = max(((d, s) for d, s in aurocs.items() if s.values), key=lambda t: t[1].mean, default=(None, Stat()))
        rows.append({
            "attack": attack, "name": cs[0].attack.name, "seeds": sorted({c.seed for c in base}),
            "ca": _stats(base, lambda r: r.metrics.upstream.backdoored.ca),
            "asr_upstream": _stats(base, lambda r: r.metrics.upstream.backdoored.asr),
            "asr_transfer": _stats(base, lambda r: r.metrics.transfer.backdoored.asr),
            "asr_baseline": _stats(base, lambda r: r.metrics.transfer.clean.asr),
            "ca_transfer": _stats(base, lambda r: r.metrics.transfer.backdoored.ca),
            "best_auroc": best[1], "best_auroc_by": best[0],
            "failed": sum(not c.ok for c in cs if c.defense is None),
        })
    return rows


IMPLANTED_ASR = 0.5
"""A backdoor counts as implanted when its mean ASR before transfer (the backdoored upstream on its own triggered
test set, same label space) reaches this; below it the lift cannot say whether a backdoor survives transfer,
because there was none to survive, and the headline marks the entry instead of reading it as removal."""


def upstream_builds(cells: list[Result], chosen=None) -> list[dict]:
    """The builds of one scenario's clean upstream (`Result.upstream_build`) used by the `chosen(cell)` cells
    (default: every finished cell with upstream scores), in the order first finished (ties: by label). Each holds its
    `label`, the clean upstream CA, the CA of the models the victim transferred from it (one value per seed, from the
    first cell finished), the attacks of its chosen cells and the hardware most of them ran on. A scenario computed
    in one place has one build."""
    chosen = chosen or (lambda c: c.ok and c.metrics is not None and c.metrics.upstream is not None)
    by, label = {}, build_labels(cells)
    for c in sorted(cells, key=lambda c: (c.finished, label[c.upstream_build])):
        if not chosen(c):
            continue
        b = by.setdefault(label[c.upstream_build],
                          {"cas": Counter(), "per_seed": {}, "attacks": set(), "hardware": Counter()})
        m = c.metrics
        if m and m.upstream and m.upstream.clean.ca is not None:
            b["cas"][m.upstream.clean.ca] += 1
        if m and m.transfer and m.transfer.clean.ca is not None:
            b["per_seed"].setdefault(c.seed, m.transfer.clean.ca)
        b["attacks"].add(c.attack_id)
        b["hardware"][hardware_label(c)] += 1
    return [{"label": label, "ca_upstream": b["cas"].most_common(1)[0][0] if b["cas"] else None,
             "ca_transfer": sorted(b["per_seed"].items()), "attacks": sorted(b["attacks"]),
             "hardware": min(b["hardware"], key=lambda h: (-b["hardware"][h], h))} for label, b in by.items()]


def headline(cells: list[Result]) -> dict:
    """Does the backdoor survive transfer, scenario by scenario? One row per scenario (name, version), one column
    per attack; each entry holds, over the seeds of its no-defense cells: the ASR before transfer (same label
    space), the ASR after transfer, the clean-upstream baseline and the lift = ASR after transfer minus the
    baseline, paired by seed (so the interval is that of the difference), and whether the backdoor was implanted
    upstream at all (IMPLANTED_ASR). Rows also carry `builds`, the builds of the clean upstream those cells
    descend from (upstream_builds; one unless the scenario was resumed elsewhere or its store lost), each
    with its clean upstream CA and the CA of the models transferred from it (one value per seed); `ca_upstream`
    holds one CA per build and `ca_transfer` pools the builds' per-seed values (shown per build when several)."""
    def counted(c):
        return c.defense is None and c.ok and c.role == "backdoored"
    cells = [c for c in cells if c.transfers]  # the calibration scenarios have no transfer to survive
    rows = []
    for (name, version), scs in by_scenario(cells).items():
        by_attack = defaultdict(list)
        for c in filter(counted, scs):
            by_attack[c.attack.id].append(c)
        if not by_attack:
            continue
        builds = [{**b, "ca_transfer": _stats(b["ca_transfer"], lambda t: t[1])}
                  for b in upstream_builds(scs, chosen=counted)]
        entries = {a: {"asr_upstream": _stats(cs, lambda c: c.metrics.upstream.backdoored.asr),
                       "asr_transfer": _stats(cs, lambda c: c.metrics.transfer.backdoored.asr),
                       "asr_baseline": _stats(cs, lambda c: c.metrics.transfer.clean.asr),
                       "lift": _stats(cs, lambda c: c.metrics.transfer.backdoored.asr - c.metrics.transfer.clean.asr),
                       "seeds": len(cs)} for a, cs in by_attack.items()}
        for e in entries.values():
            e["implanted"] = e["asr_upstream"].mean is not None and e["asr_upstream"].mean >= IMPLANTED_ASR
        rows.append({"scenario": name, "version": version, "key": f"{name}-v{version}", "entries": entries,
                     "builds": builds, "ca_upstream": _stats(builds, lambda b: b["ca_upstream"]),
                     "ca_transfer": _stats([v for b in builds for v in b["ca_transfer"].values], lambda v: v)})
    return {"attacks": sorted({a for r in rows for a in r["entries"]}), "rows": rows}


def by_tier(cells: list[Result], tiers: dict[tuple[str, int], tuple[str, str]]) -> dict:
    """The headline across tiers: for each application and tier (`tiers`: (scenario name, version) -> (tier,
    application), e.g. gridfile.tiers()), over the attacks of that scenario version's headline row: how many were
    run, how many planted their backdoor upstream (IMPLANTED_ASR), how many of those survive transfer (the lift's
    95% interval lies above 0, which needs two seeds or more), and the median lift of the implanted ones.
    Returns {"tiers": [...], "applications": {application: {tier: entry}}}."""
    from statistics import median
    apps: dict = defaultdict(dict)
    for r in headline(cells)["rows"]:
        where = tiers.get((r["scenario"], r["version"]))
        if where is None:
            continue
        tier, app = where
        lifts = [e["lift"] for e in r["entries"].values() if e["implanted"]]
        apps[app][tier] = {"key": r["key"], "attacks": len(r["entries"]), "implanted": len(lifts),
                           "survive": sum(1 for v in lifts if v.half is not None and v.mean - v.half > 0),
                           "median_lift": median(v.mean for v in lifts) if lifts else None,
                           "seeds": min(e["seeds"] for e in r["entries"].values())}
    order = sorted({t for a in apps.values() for t in a})
    return {"tiers": order, "applications": dict(sorted(apps.items()))}


# Harness changes that altered what some committed cells would measure, without changing any plugin's code (so the
# code hashes cannot tell): the site marks the rows whose cells finished before the fix. See CHANGELOG.md.
HARNESS_CHANGES = [
    {"attack": "random-backdoor", "before": "2026-12-07T14:30:00Z",
     "why": "computed before the scoring fix of 2026-12-07: the defended scores used other random triggers than the "
            "undefended ones (a defense that changes nothing moved ASR by up to 5 points); recompute to compare"},
]


def superseded(c: Result) -> list[str]:
    """Why a cell's scores predate a harness fix (HARNESS_CHANGES), if they do."""
    return [ch["why"] for ch in HARNESS_CHANGES
            if c.attack is not None and c.attack.name == ch["attack"] and c.finished < ch["before"]]


def stale(rows: list[dict], registry) -> None:
    """Mark each defense row whose cells ran an earlier version of the defense's code (`row['stale']`)."""
    for r in rows:
        try:
            now = registry.code_hash("defense", r["name"])
        except Exception:  # not a shipped or installed defense: nothing to compare with
            now = None
        r["stale"] = now is not None and any(code != now for code in r["codes"])


DEFENSE_SCORES = ("ca", "asr", "ra", "der", "input_auroc", "model_score", "sample_auroc", "sample_aupr",
                  "sample_tpr_at_5fpr", "input_aupr", "input_tpr_at_5fpr")


def defense_rows(cells: list[Result]) -> list[dict]:
    """One row per (defense, attack): scores after the defense, their change, DER, AUROC, wall time."""
    by = defaultdict(list)
    for c in cells:
        if c.defense is not None and c.role == "backdoored":
            by[(c.defense.id, c.attack.id)].append(c)
    rows = []
    for (defense, attack), cs in sorted(by.items()):
        ok = [c for c in cs if c.ok]
        row = {"defense": defense, "name": cs[0].defense.name, "attack": attack, "position": cs[0].defense.position,
               "seeds": sorted({c.seed for c in ok}), "failed": len(cs) - len(ok),
               "errors": sorted({f"{c.error.type}: {c.error.message}" for c in cs if not c.ok and c.error}),
               "wall": _stats(ok, lambda r: r.wall_time_s.get("defense"))}
        for k in DEFENSE_SCORES:
            row[k] = _stats(ok, lambda r, k=k: r.metrics.defense.get(k))
        row["nonfinite"] = sum(bool(c.metrics.defense.nonfinite) for c in ok)
        row["codes"] = sorted({c.defense.code for c in ok if c.defense.code})
        row["affected"] = sorted({why for c in ok for why in superseded(c)})
        for k in ("ca", "asr", "ra"):
            row[f"d_{k}"] = _stats(ok, lambda r, k=k: getattr(r.metrics.defense, k)
                                   - getattr(r.metrics.transfer.backdoored, k))
            row[f"before_{k}"] = _stats(ok, lambda r, k=k: getattr(r.metrics.transfer.backdoored, k))
        rows.append(row)
    return rows


def by_scenario(cells: list[Result]) -> dict[tuple[str, int], list[Result]]:
    """Cells grouped by (scenario name, version): versions never mix."""
    out = defaultdict(list)
    for c in cells:
        out[scenario_key(c)].append(c)
    return dict(sorted(out.items()))


def _stage_ca(c: Result, stage: str):
    """The clean accuracy a cell gives the model of one of its stages (a function of the weights alone)."""
    m = c.metrics
    if m is None:
        return None
    section = {"upstream": (m.upstream, "clean"), "backdoor": (m.upstream, "backdoored"),
               "downstream_clean": (m.transfer, "clean"), "downstream": (m.transfer, "backdoored")}
    if stage == "defense":
        return m.defense.ca if m.defense else None
    pair, side = section.get(stage, (None, None))
    return getattr(pair, side).ca if pair is not None else None


def retrained(cells: list[Result]) -> dict[str, int]:
    """Stage keys whose model differs between these cells, as {key: how many versions}. A key names a stage's
    inputs, so one key is one recipe; but a stage built again (on another machine, or after its store was lost)
    need not give the same weights: training is not bit-identical across CPUs or GPUs. Two versions differ when
    their files name different weights (sha256, recorded since 2026-11-28) or give the stage's model a different
    clean accuracy (older files)."""
    seen = defaultdict(lambda: (set(), set()))  # key -> (weights sha256s, clean accuracies of the stage's model)
    for c in cells:
        for stage, key in c.artifacts.items():
            shas, cas = seen[key]
            if c.weights.get(stage):
                shas.add(c.weights[stage])
            ca = _stage_ca(c, stage)
            if ca is not None:
                cas.add(ca)
    return {k: max(len(a), len(b)) for k, (a, b) in sorted(seen.items()) if max(len(a), len(b)) > 1}
