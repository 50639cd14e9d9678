"""Calibration: the no-transfer scenario's results beside published figures (benchmark/references/calibration.yaml).

Every attack x defense of the calibration scenario gets a row: our CA / ASR (and the defense's detection score)
as mean and 95% interval over seeds, the published CA / ASR where a source reports one, and a verdict on the
row's `expect` thresholds (checked on our mean). `bdbench calibration` prints it; the site shows it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Optional

from .config import read_yaml
from .errors import BenchError
from .results import Stat

REFERENCE = resources.files("benchmark") / "references" / "calibration.yaml"
EXPECT_KEYS = ("asr_min", "asr_max", "ca_loss_max", "model_score_min", "model_score_max", "input_auroc_min")


def reference() -> dict:
    """The shipped reference table, checked: every row names a known source and only known expectations."""
    ref = read_yaml(REFERENCE.read_bytes(), str(REFERENCE))
    for i, row in enumerate(ref.get("rows", []) + ref.get("controls", [])):
        if row.get("source") not in ref["sources"]:
            raise BenchError(f"{REFERENCE}: row {i} names source {row.get('source')!r}, "
                             f"not one of {sorted(ref['sources'])}")
        bad = set(row.get("expect", {})) - set(EXPECT_KEYS)
        if bad:
            raise BenchError(f"{REFERENCE}: row {i}: unknown expectation {sorted(bad)}; "
                             f"known: {', '.join(EXPECT_KEYS)}")
    return ref


@dataclass
class Row:
    attack: str
    defense: str                      # "none": the undefended backdoored model
    ours: dict = field(default_factory=dict)   # metric -> Stat over seeds
    n: int = 0
    published: dict = field(default_factory=dict)
    source: Optional[str] = None
    expect: dict = field(default_factory=dict)
    note: str = ""
    checks: list = field(default_factory=list)  # (expectation, our value, passed)
    control: bool = False

    @property
    def verdict(self) -> str:
        if not self.expect:
            return ""
        if self.n == 0:
            return "not run"
        return "pass" if all(ok for _, _, ok in self.checks) else "FAIL"


def _stat(values) -> Stat:
    return Stat([v for v in values if v is not None])


def _check(row: Row, before_ca: Optional[float]) -> None:
    mean = lambda k: row.ours[k].mean if k in row.ours else None  # noqa: E731
    for key, bound in row.expect.items():
        metric = {"asr_min": "asr", "asr_max": "asr", "model_score_min": "model_score",
                  "model_score_max": "model_score", "input_auroc_min": "input_auroc"}.get(key)
        if key == "ca_loss_max":
            value = None if before_ca is None or mean("ca") is None else before_ca - mean("ca")
        else:
            value = mean(metric)
        ok = value is not None and (value >= bound if key.endswith("_min") else value <= bound)
        row.checks.append((f"{key.replace('_', ' ')} {bound}", value, ok))


def table(cells: list, scenario: str | None = None) -> tuple[list[Row], dict]:
    """Our rows (every attack x defense found, the reference rows first) for the newest version of `scenario`
    (default: the reference's scenario) in `cells`, and the reference."""
    ref = reference()
    ref["published_for"] = ref["scenario"]  # the setting the published figures were measured in
    name = ref["scenario"] = scenario or ref["scenario"]
    mine = [c for c in cells if c.scenario.name == name and c.ok]
    if not mine:
        return [], ref
    version = max(c.scenario.version for c in mine)
    mine = [c for c in mine if c.scenario.version == version]
    ref["version"] = version
    groups: dict[tuple, list] = {}
    for c in mine:
        ctrl = c.role == "clean-upstream"
        key = (c.attack_id, c.defense_id or "none", ctrl)
        groups.setdefault(key, []).append(c)
    rows: dict[tuple, Row] = {}
    for (attack, defense, ctrl), cs in groups.items():
        m = [c.metrics.transfer.backdoored if defense == "none" else c.metrics.defense for c in cs]
        keys = ("ca", "asr", "ra", "der", "model_score", "input_auroc", "sample_auroc")
        ours = {k: _stat([getattr(x, k, None) for x in m]) for k in keys}
        # a detector that names the target class (Neural Cleanse's target_guess): 1 where it is the attack's target
        found = [float(c.info["target_guess"] == c.metrics.transfer.backdoored.target)
                 for c in cs if not ctrl and isinstance(c.info, dict) and "target_guess" in c.info
                 and c.metrics.transfer is not None]
        ours["target_found"] = _stat(found)
        rows[(attack, defense, ctrl)] = Row(attack, defense, {k: v for k, v in ours.items() if v.values}, len(cs),
                                            control=ctrl)
    for r in ref.get("rows", []):
        key = (r["attack"], r["defense"], False)
        row = rows.setdefault(key, Row(r["attack"], r["defense"]))
        row.published, row.source = r.get("published", {}), r["source"]
        row.expect, row.note = r.get("expect", {}), r.get("note", "")
    for r in ref.get("controls", []):
        key = ("clean-upstream", r["defense"], True)
        row = rows.setdefault(key, Row("clean-upstream", r["defense"], control=True))
        row.source, row.expect, row.note = r["source"], r.get("expect", {}), r.get("note", "")
    for (attack, defense, ctrl), row in rows.items():
        base = rows.get((attack, "none", False))
        before = base.ours["ca"].mean if base and "ca" in base.ours else None
        if row.n:
            _check(row, before)
    order = {(r["attack"], r["defense"]): i for i, r in enumerate(ref.get("rows", []))}
    ranked = sorted(rows.values(), key=lambda r: (r.control, order.get((r.attack, r.defense), len(order)),
                                                  r.attack, r.defense != "none", r.defense))
    return ranked, ref


def print_table(rows: list[Row], ref: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from .report import fmt
    console = console or Console(width=170)
    if not rows:
        console.print(f"no finished results of scenario {ref['scenario']} here: run `bdbench run {ref['scenario']}`")
        return
    t = Table(title=f"calibration · {ref['scenario']} v{ref.get('version')} (no transfer) beside published figures",
              title_justify="left")
    for col in ("attack", "defense", "CA", "ASR", "pub. CA", "pub. ASR", "model score", "target found",
                "input AUROC", "sample AUROC", "seeds", "check", "source"):
        t.add_column(col, justify="left" if col in ("attack", "defense", "check", "source") else "right")
    pub = lambda r, k: f"{r.published[k]:.3f}" if k in r.published else "–"  # noqa: E731
    for r in rows:
        get = lambda k: fmt(r.ours[k].values) if k in r.ours else "–"  # noqa: E731
        check = r.verdict + ("" if not r.checks or r.verdict == "pass" else ": " + "; ".join(
            f"{e} (ours {'–' if v is None else f'{v:.3f}'})" for e, v, ok in r.checks if not ok))
        t.add_row(r.attack, r.defense, get("ca"), get("asr"), pub(r, "ca"), pub(r, "asr"), get("model_score"),
                  get("target_found"), get("input_auroc"), get("sample_auroc"), str(r.n), check, r.source or "")
    console.print(t)
    for key, text in ref["sources"].items():
        console.print(f"{key}: {' '.join(text.split())}", style="dim")
    for r in rows:
        if r.note:
            console.print(f"{r.attack} / {r.defense}: {' '.join(r.note.split())}", style="dim")


def markdown(rows: list[Row], ref: dict) -> str:
    """The table as a Markdown page (docs/calibration-results.md is generated with it, never typed)."""
    from .report import fmt
    out = [f"# Calibration results: {ref['scenario']} v{ref.get('version')}", "",
           "Generated by `bdbench calibration --markdown` from the committed result files; do not edit by hand.",
           "No transfer: the backdoored model is defended and scored in its own label space. Ours: mean ± 95% "
           "Student-t half-width over seeds. Published: the source's CA / ASR. Target found: the share of seeds where "
           "the detector's guess of the target class (Neural Cleanse's smallest reversed trigger) is the attack's.", "",
           "| attack | defense | CA | ASR | published CA | published ASR | model score | target found | input AUROC "
           "| sample AUROC | seeds | check | source |", "|" + "---|" * 13]
    for r in rows:
        get = lambda k: fmt(r.ours[k].values) if k in r.ours else "–"  # noqa: E731
        pub = lambda k: f"{r.published[k]:.3f}" if k in r.published else "–"  # noqa: E731
        miss = "; ".join(f"{e} (ours {'–' if v is None else f'{v:.3f}'})" for e, v, ok in r.checks if not ok)
        out.append(f"| {r.attack} | {r.defense} | {get('ca')} | {get('asr')} | {pub('ca')} | {pub('asr')} | "
                   f"{get('model_score')} | {get('target_found')} | {get('input_auroc')} | {get('sample_auroc')} | "
                   f"{r.n} | "
                   f"{r.verdict}{': ' + miss if miss else ''} | {r.source or ''} |")
    out += ["", "## Sources", ""] + [f"- **{k}**: {' '.join(v.split())}" for k, v in ref["sources"].items()]
    notes = [f"- {r.attack} / {r.defense}: {' '.join(r.note.split())}" for r in rows if r.note]
    return "\n".join(out + (["", "## Notes", ""] + notes if notes else [])) + "\n"


SCENARIOS = ("calib-cifar10", "calib-digits")  # the calibration scenarios the site and the docs page show


def tables(cells: list[dict]) -> list[dict]:
    """{"rows", "ref"} for every calibration scenario with results in `cells` (the site's calibration section)."""
    out = []
    for name in SCENARIOS:
        rows, ref = table(cells, name)
        if rows:
            out.append({"rows": rows, "ref": ref})
    return out


def page(results_root="leaderboard/results") -> str:
    """docs/calibration-results.md: the Markdown table of every calibration scenario with committed results."""
    from pathlib import Path

    from . import results
    parts = []
    for name in SCENARIOS:
        folder = sorted(Path(results_root).glob(f"{name}-v*"))
        if folder:
            parts.append(markdown(*table(results.load(folder[-1]), name)))
    return "\n".join(parts)
