"""The terminal table of a run: CA / ASR / RA before transfer, after transfer (with the clean-upstream
baseline) and after each defense; mean ± 95% interval half-width over seeds."""
from __future__ import annotations

from collections import defaultdict

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .metrics import mean_ci
from .resultfile import Result
from .results import model_detection_left_out, model_detection_rows

COLUMNS = [("CA", "ca"), ("ASR", "asr"), ("RA", "ra"), ("DER", "der"), ("input AUROC", "input_auroc"),
           ("sample AUROC", "sample_auroc"), ("model score", "model_score")]


def fmt(values) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    m, h = mean_ci(vals)
    return f"{m:.3f}" if h != h else f"{m:.3f} ± {h:.3f}"


def rows(cells: list[Result]) -> dict[str, list[tuple[str, dict[str, list], int, str]]]:
    """attack id -> [(row label, {metric: values over seeds}, n seeds, failure note)]"""
    by_attack = defaultdict(list)
    for c in cells:
        if c.role == "backdoored":
            by_attack[c.attack.id].append(c)
    out = {}
    for attack, cs in by_attack.items():
        base = [c for c in cs if c.defense is None and c.ok]
        table = []
        for label, section, side in (("upstream clean", "upstream", "clean"),
                                     ("upstream backdoored", "upstream", "backdoored"),
                                     ("downstream from clean upstream", "transfer", "clean"),
                                     ("downstream from backdoored", "transfer", "backdoored")):
            vals = defaultdict(list)
            for c in base:
                for k, v in getattr(getattr(c.metrics, section), side).to_dict().items():
                    vals[k].append(v)
            table.append((label, vals, len(base), ""))
        for d in sorted({c.defense.id for c in cs if c.defense is not None}):
            dc = [c for c in cs if c.defense_id == d]
            ok = [c for c in dc if c.ok]
            vals = defaultdict(list)
            for c in ok:
                for k, v in c.metrics.defense.to_dict().items():
                    vals[k].append(v)
            failed = [c for c in dc if not c.ok]
            note = (f"{len(failed)} failed: {failed[0].error.type}: {failed[0].error.message[:80]}"
                    if failed else "")
            flagged = sum(bool(c.metrics.defense.nonfinite) for c in ok)
            if flagged:
                note = "; ".join(x for x in (note, f"NaN/inf scores in {flagged} cell(s), counted 0.5") if x)
            table.append((f"  + {d}", vals, len(ok), note))
        failed_attack = [c for c in cs if c.defense is None and not c.ok]
        if failed_attack:
            e = failed_attack[0].error
            table.append(("attack failed", {}, 0, f"{e.type}: {e.message[:120]}"))
        out[attack] = table
    return out


def print_table(cells: list[Result], title: str, console: Console | None = None) -> None:
    console = console or Console(width=max(Console().width, 150))
    for attack, table_rows in rows(cells).items():
        t = Table(title=f"{title} · attack {attack}", title_justify="left")
        t.add_column("model")
        for name, _ in COLUMNS:
            t.add_column(name, justify="right")
        t.add_column("seeds", justify="right")
        t.add_column("note")
        for label, vals, n, note in table_rows:
            t.add_row(label, *[fmt(vals.get(k, [])) for _, k in COLUMNS], str(n), note)
        console.print(t)
    det = model_detection_rows(cells)
    if det:
        t = Table(title=f"{title} · model-level detection (backdoored- vs clean-upstream transfers)",
                  title_justify="left")
        for col in ("defense", "AUROC", "AUPR", "TPR@5%FPR", "backdoored", "negatives", "AUROC by negative", "missing"):
            t.add_column(col, justify="left" if col == "defense" else "right")
        for r in det:  # with several builds of the clean upstream, one row per build: scores compare within one
            t.add_row(r["defense"] + (f" ({r['build']})" if r["build"] else ""), f"{r['auroc']:.3f}",
                      f"{r['aupr']:.3f}", f"{r['tpr_at_5fpr']:.3f}", str(r["n_backdoored"]), str(r["n_clean"]),
                      ", ".join(f"{k} {v:.3f}" for k, v in r["by_negative"].items()),
                      str(r["missing"]) + (" (count 0.5)" if r["missing"] else ""))
        console.print(t)
    for x in model_detection_left_out(cells):
        console.print(f"{x['defense']}: {left_out_note(x)}", style="dim")
    console.print("upstream rows: same label space, the attack's own target. downstream rows: after transfer to the "
                  "victim's task (new head); ASR uses t*, the class the delivered model gives most triggered "
                  "validation images. Defense rows: the delivered (backdoored) downstream model after the defense, "
                  "t* kept. ± is the 95% interval half-width over seeds.", style="dim")


def left_out_note(x: dict) -> str:
    """Why model-level detection leaves cells out (results.model_detection_left_out), in words."""
    return (f"{x['backdoored']} backdoored and {x['negatives']} negative transfers (clean-upstream controls, null "
            f"attacks) of {x['build']} left out: it has "
            f"{x['why']} for this defense, and scores compare only within one build of the clean upstream")


def build_name(b: dict) -> str:
    """A build of the clean upstream in words: its label, and where its cells ran when the label is the weights."""
    return b["label"] + ("" if b["label"].startswith(b["hardware"]) else f" on {b['hardware']}")


HEADLINE_TITLE = ("does the backdoor survive transfer? (lift = ASR after transfer minus the clean-upstream baseline, "
                  "paired by seed)")
HEADLINE_COLUMNS = ("scenario", "clean CA up", "clean CA down", "attack", "ASR before transfer", "ASR after transfer",
                    "baseline", "lift", "seeds")


def headline_table(cells: list[dict]) -> tuple[list[tuple[list[str], bool]], list[str]]:
    """results.headline in long form, for the terminal and docs/findings.md alike: ([(one row's texts under
    HEADLINE_COLUMNS, whether it ends its scenario)], notes)."""
    from .results import IMPLANTED_ASR, headline

    out, notes = [], []
    for r in headline(cells)["rows"]:
        builds = r["builds"]
        build_of = {a: " [" + ",".join(str(i + 1) for i, b in enumerate(builds) if a in b["attacks"]) + "]"
                    for a in r["entries"]} if len(builds) > 1 else {}  # an attack resumed on other hardware: both
        if build_of:
            notes.append(f"{r['key']}: {len(builds)} builds of the clean upstream, CA columns in this order: "
                         + "; ".join(f"[{i + 1}] {build_name(b)}" for i, b in enumerate(builds))
                         + " (the same recipe built again gives another model; [n] after an attack: the builds its "
                           "cells used; each cell's lift is paired with its own build's clean baseline)")
        for i, (a, e) in enumerate(sorted(r["entries"].items())):
            first = i == 0
            out.append(([r["key"] if first else "",
                         " / ".join(fmt([b["ca_upstream"]]) for b in builds) if first else "",
                         " / ".join(fmt(b["ca_transfer"].values) for b in builds) if first else "",
                         a + build_of.get(a, ""),
                         *[fmt(e[k].values) for k in ("asr_upstream", "asr_transfer", "asr_baseline")],
                         fmt(e["lift"].values) if e["implanted"] else f"({fmt(e['lift'].values)}) not implanted",
                         str(e["seeds"])], i == len(r["entries"]) - 1))
    notes.append(f"(lift) not implanted: the ASR before transfer is under {IMPLANTED_ASR}, so the attack never "
                 "planted its backdoor upstream and the lift says nothing about surviving transfer.")
    return out, notes


def print_headline(cells: list[dict], console: Console | None = None) -> None:
    """The headline table in the terminal: one row per scenario and attack, mean ± 95% interval over seeds."""
    # piped output (no terminal) gets a width that fits every column rather than a truncated table
    if console is None:
        probe = Console()
        console = Console(width=max(probe.width, 150 if probe.is_terminal else 210))
    t = Table(title=HEADLINE_TITLE, title_justify="left")
    for col in HEADLINE_COLUMNS:
        t.add_column(col, justify="left" if col in ("scenario", "attack") else "right", no_wrap=True)
    table, notes = headline_table(cells)
    for texts, last in table:
        t.add_row(*[escape(x) for x in texts], end_section=last)
    console.print(t)
    for n in notes:
        console.print(escape(n), style="dim")


def tier_entry(e: dict | None) -> str:
    """One application x tier entry of results.by_tier in words."""
    if e is None:
        return "not run"
    lift = "" if e["median_lift"] is None else f"; median lift {e['median_lift']:.2f}"
    return (f"{e['survive']} of {e['implanted']} implanted survive ({e['attacks']} attacks{lift}; "
            f"{e['key']}, {e['seeds']}+ seeds)")


def tier_markdown(cells: list[dict], tiers: dict) -> list[str]:
    """The headline across tiers (results.by_tier) as a Markdown section; [] when no tier has results."""
    from .results import IMPLANTED_ASR, by_tier
    t = by_tier(cells, tiers)
    if not t["applications"]:
        return []
    out = ["## Across tiers", "",
           "Each shipped grid's current scenarios (`bdbench plan GRID` lists them), by application and tier (grid: "
           f"upstream architecture). Of the attacks run, those that planted their backdoor upstream (ASR before "
           f"transfer at least {IMPLANTED_ASR}), and of those, the ones that survive transfer: their lift's 95% "
           "interval lies above 0 (two seeds or more). The median lift is over the implanted attacks.", "",
           "| application | " + " | ".join(t["tiers"]) + " |", "|---|" + "---|" * len(t["tiers"])]
    out += [f"| {app} | " + " | ".join(tier_entry(by.get(tier)) for tier in t["tiers"]) + " |"
            for app, by in t["applications"].items()]
    return out + [""]


def headline_markdown(cells: list[dict], tiers: dict | None = None) -> str:
    """docs/findings.md: the headline table as Markdown, generated from the result files, never typed; with `tiers`
    (gridfile.tiers()), the summary across tiers first."""
    table, notes = headline_table(cells)
    out = ["# Does the backdoor survive transfer?", "",
           "Generated by `bdbench leaderboard headline --markdown > docs/findings.md` from the committed result files "
           "(`leaderboard/results/`); do not edit by hand. One row per scenario version and attack, over the seeds of "
           "its undefended cells: the ASR before transfer (the upstream model, the attack's own target), after "
           "transfer (the victim's model, target t\\*), the same for the model transferred from the clean upstream "
           "(baseline), and the lift, ASR after transfer minus the baseline, paired by seed. Mean ± 95% Student-t "
           "half-width. Definitions: [metrics.md](metrics.md). What defenses do after transfer: the site and "
           "`bdbench compare`.", "", *tier_markdown(cells, tiers or {}),
           "## By scenario", "",
           "| " + " | ".join(HEADLINE_COLUMNS) + " |", "|" + "|".join("---" if c in ("scenario", "attack") else "--:"
                                                                 for c in HEADLINE_COLUMNS) + "|"]
    out += ["| " + " | ".join(x.replace("|", "\\|") for x in texts) + " |" for texts, _ in table]
    out += [""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"
