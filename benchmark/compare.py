"""`bdbench compare SCENARIO A B ...`: submissions side by side in the terminal, with intervals,
differences against the first, and whether the 95% intervals overlap."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import results
from .errors import BenchError
from .site import fmt

DEFENSE_COLS = [("CA", "ca"), ("ASR", "asr"), ("RA", "ra"), ("DER", "der"), ("input AUROC", "input_auroc"),
                ("sample AUROC", "sample_auroc")]
VERDICT = {True: "overlaps", False: "distinct", None: "one seed"}
ATTACK_COLS = [("CA", "ca"), ("ASR before", "asr_upstream"), ("ASR after", "asr_transfer"),
               ("baseline", "asr_baseline"), ("best AUROC", "best_auroc")]


def compare(results_dir: Path, scenario: str, names: list[str], version: int | None = None,
            console: Console | None = None) -> list[dict]:
    console = console or Console(width=160)
    groups = results.by_scenario(results.load(results_dir))
    versions = sorted(v for (n, v) in groups if n == scenario)
    if not versions:
        raise BenchError(f"no results for scenario '{scenario}' under {results_dir}; "
                         f"scenarios there: {', '.join(sorted({n for n, _ in groups})) or '(none)'}")
    version = version or versions[-1]
    cells = groups.get((scenario, version))
    if cells is None:
        raise BenchError(f"scenario {scenario} has results for versions {versions}, not {version}")
    drows, arows = results.defense_rows(cells), results.attack_rows(cells)
    defenses, attacks = {r["defense"] for r in drows}, {r["attack"] for r in arows}
    unknown = [n for n in names if n not in defenses and n not in attacks]
    if unknown:
        raise BenchError(f"{', '.join(unknown)}: not in the results of {scenario} v{version}; defenses: "
                         f"{', '.join(sorted(defenses)) or '(none)'}; attacks: {', '.join(sorted(attacks))}")
    if all(n in defenses for n in names):
        kind, cols = "defense", DEFENSE_COLS
        keyed = {(r["attack"], r["defense"]): r for r in drows}
        groups_by = sorted({r["attack"] for r in drows})
    elif all(n in attacks for n in names):
        kind, cols = "attack", ATTACK_COLS
        keyed = {(None, r["attack"]): r for r in arows}
        groups_by = [None]
    else:
        raise BenchError("compare defenses with defenses, or attacks with attacks")
    out = []
    for g in groups_by:
        t = Table(title=f"{scenario} v{version}" + (f" · attack {g}" if g else " · attacks"), title_justify="left")
        t.add_column(kind)
        for label, _ in cols:
            t.add_column(label, justify="right")
        first = keyed.get((g, names[0]))
        for n in names:
            r = keyed.get((g, n))
            if r is None:
                t.add_row(n, *["no result"] * len(cols))
                continue
            cells_ = []
            for _, k in cols:
                s = r[k]
                text = fmt(s)
                if n != names[0] and first is not None and s.mean is not None and first[k].mean is not None:
                    d = s.mean - first[k].mean
                    text += f"  (Δ {d:+.3f}, {VERDICT[s.overlaps(first[k])]})"
                cells_.append(text)
            t.add_row(n, *cells_)
            out.append({"group": g, "name": n, **{k: r[k].mean for _, k in cols}})
        console.print(t)
    console.print(f"Δ against {names[0]}; 'overlaps' when the 95% intervals over seeds overlap (then the difference "
                  f"is not resolved by these seeds); 'one seed' where either side has no interval.", style="dim")
    return out
