"""The static leaderboard: `bdbench leaderboard build OUT` from committed result files.

Pure function of its inputs (result files, manifests, media): rebuilding from the same inputs gives
byte-identical output. jinja2 autoescapes every value; no external resource is referenced, so the
site works from file:// and from GitHub Pages.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import jinja2

from . import calibration, plots, results
from .report import left_out_note
from .provenance import hardware_label
from .resultfile import Result
from .errors import BenchError
from .registry import Registry

TEMPLATES = Path(__file__).parent / "templates"


def slug(text: str) -> str:
    """A file-name-safe, collision-free slug."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "x"
    return base if base == text else f"{base}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def fmt(stat, digits: int = 3) -> str:
    if stat is None or stat.mean is None:
        return "–"
    if stat.half is None or stat.half != stat.half:
        return f"{stat.mean:.{digits}f}"
    return f"{stat.mean:.{digits}f} ± {stat.half:.{digits}f}"


def sort_value(stat) -> str:
    return "" if stat is None or stat.mean is None else f"{stat.mean:.6f}"


def paper_url(paper: str) -> str | None:
    m = re.search(r"https?://\S+", paper or "")
    return m.group(0).rstrip(".,)") if m else None


def _flat(r: Result) -> dict:
    def g(section, side=None, k=None):
        sec = getattr(r.metrics, section, None) if r.metrics else None
        if sec is None:
            return None
        return sec.get(side) if k is None else getattr(getattr(sec, side), k)
    return {"scenario": r.scenario.name, "version": r.scenario.version, "attack": r.attack_id,
            "defense": r.defense_id or "none", "seed": r.seed, "status": r.status,
            "upstream_clean_ca": g("upstream", "clean", "ca"), "upstream_clean_asr": g("upstream", "clean", "asr"),
            "upstream_backdoored_ca": g("upstream", "backdoored", "ca"),
            "upstream_backdoored_asr": g("upstream", "backdoored", "asr"),
            "transfer_clean_ca": g("transfer", "clean", "ca"), "transfer_clean_asr": g("transfer", "clean", "asr"),
            "transfer_backdoored_ca": g("transfer", "backdoored", "ca"),
            "transfer_backdoored_asr": g("transfer", "backdoored", "asr"),
            "transfer_backdoored_ra": g("transfer", "backdoored", "ra"),
            "defense_ca": g("defense", "ca"), "defense_asr": g("defense", "asr"), "defense_ra": g("defense", "ra"),
            "defense_der": g("defense", "der"), "defense_input_auroc": g("defense", "input_auroc"),
            "defense_model_score": g("defense", "model_score"), "defense_sample_auroc": g("defense", "sample_auroc"),
            "role": r.role, "upstream_build": r.upstream_build, "git_commit": r.provenance["git"]["commit"],
            "bdbench": r.provenance["packages"].get("bdbench"), "file": r.path}


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["sv"] = sort_value
    env.globals["slug"] = slug
    env.filters["left_out_note"] = left_out_note  # the terminal's sentence, one source
    return env


MARKER = ".bdbench-site"  # written into every built site: only such a folder is ever emptied by a rebuild


def _clear(out: Path, results_dir: Path) -> None:
    """Empty `out` for a rebuild, refusing anything that is not a folder we built: the results themselves, a
    folder holding them, or a non-empty folder without the marker (`build .` must not wipe a checkout)."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"{out}: exists and is not a folder; give a new or empty folder for the site, e.g. _site")
    o, r = out.resolve(), results_dir.resolve()
    if o == r or o in r.parents:
        raise BenchError(f"{out}: holds the result files ({results_dir}); building there would delete them. "
                         "Give another output folder, e.g. _site")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise BenchError(f"{out}: not empty and not a site bdbench built (no {MARKER}); refusing to empty it. "
                         "Give a new or empty folder, e.g. _site")
    if out.exists():
        shutil.rmtree(out)


def build(results_dir: Path, out: Path, registry: Registry | None = None) -> dict:
    """Write the site into `out` (a new or empty folder, or an earlier site, which is emptied first). Returns counts
    for the caller to report."""
    results_dir, out = Path(results_dir), Path(out)
    cells = results.load(results_dir)
    if not cells:
        raise BenchError(f"{results_dir}: holds no result files (*.json); run a scenario into it first")
    registry = registry or Registry()
    _clear(out, results_dir)
    (out / "plots").mkdir(parents=True)
    env = _env()

    from .gridfile import reproducers
    runs = reproducers()
    scenarios = []
    for (name, version), cs in results.by_scenario(cells).items():
        key = f"{name}-v{version}"
        shas = {h for c in cs for h in (c.scenario.sha256, c.scenario.recipe) if h}
        exact = [runs[h] for h in sorted(shas) if h in runs]
        # the command that runs this scenario; 'changed' when only a file of the same name and version is here
        runner = {"command": exact[0] if exact else runs.get((name, version)), "changed": not exact}
        arows, drows = results.attack_rows(cs), results.defense_rows(cs)
        results.stale(drows, registry)
        files = {}
        for c in cs:
            files.setdefault((c.attack_id, c.defense_id), []).append(c.path)
        pts = [(r["ca"].mean, r["asr"].mean, f"{r['defense']} vs {r['attack']}", r["defense"])
               for r in drows if r["position"] == "model" and r["ca"].mean is not None and r["asr"].mean is not None]
        pts += [(r["ca_transfer"].mean, r["asr_transfer"].mean, f"no defense vs {r['attack']}", "no defense")
                for r in arows if r["ca_transfer"].mean is not None and r["asr_transfer"].mean is not None]
        (out / "plots" / f"{slug(key)}-ca-asr.svg").write_text(
            plots.scatter(pts, "clean accuracy after defense", "ASR after defense", f"{key}: CA vs ASR"))
        tp = [(r["asr_upstream"].mean, r["asr_transfer"].mean, r["attack"], r["attack"])
              for r in arows if r["asr_upstream"].mean is not None and r["asr_transfer"].mean is not None]
        (out / "plots" / f"{slug(key)}-transfer.svg").write_text(
            plots.scatter(tp, "ASR before transfer", "ASR after transfer", f"{key}: does the backdoor survive?",
                          diagonal=True))
        seeds = sorted({c.seed for c in cs})
        scenarios.append({"key": key, "name": name, "version": version, "runner": runner,
                          "attacks": arows, "defenses": drows,
                          "inspections": [r for r in drows if r["position"] == "data"],
                          "model_detection": results.model_detection_rows(cs),
                          "model_detection_left_out": results.model_detection_left_out(cs),
                          "files": files, "seeds": " ".join(map(str, seeds)), "n_cells": len(cs),
                          "commits": sorted(Counter(_code(c.provenance["git"]) for c in cs).items()),
                          "retrained": results.retrained(cs),
                          "hardware": sorted(Counter(hardware_label(c) for c in cs).items()),
                          "unsandboxed": results.unsandboxed(cs),
                          "archived": all(c.path.startswith(f"{ARCHIVE}/") for c in cs)})

    # downloads and provenance: every cell file, plus flat CSV and JSON
    for c in cells:
        dest = out / "data" / "cells" / c.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results_dir / c.path, dest)
    flat = [_flat(c) for c in cells]
    buf = io.StringIO()
    if flat:
        w = csv.DictWriter(buf, fieldnames=list(flat[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(flat)
    (out / "data" / "results.csv").write_text(buf.getvalue())
    (out / "data" / "results.json").write_text(json.dumps(flat, indent=1, sort_keys=True) + "\n")

    # one page per submission that has results or a manifest
    subs = []
    names = ({("attack", c.attack.name) for c in cells if c.attack is not None}
             | {("defense", c.defense.name) for c in cells if c.defense is not None})
    names |= {(k, n) for k in ("attack", "defense") for n in registry.names(k)}
    for kind, n in sorted(names):
        try:
            m = registry.manifest(kind, n)
        except Exception:
            m = None
        own = [c for c in cells if getattr(c.attack if kind == "attack" else c.defense, "name", None) == n]
        per_scenario = []
        for (sname, ver), cs in results.by_scenario(own).items():
            key = f"{sname}-v{ver}"
            media = []
            if kind == "attack":
                for aid in sorted({c.attack_id for c in cs}):
                    src = results_dir / _scenario_folder(cs[0]) / aid / "media"
                    for png in sorted(src.glob("*.png")) if src.is_dir() else []:
                        dest = out / "media" / slug(key) / slug(aid) / png.name
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(png, dest)
                        media.append({"attack": aid, "file": dest.relative_to(out).as_posix(), "name": png.stem})
            allc = [c for c in cells if results.scenario_key(c) == (sname, ver)]
            per_scenario.append({"key": key, "media": media,
                                 "attacks": [r for r in results.attack_rows(allc) if kind == "attack" and
                                             any(c.attack_id == r["attack"] for c in cs)],
                                 "defenses": [r for r in results.defense_rows(allc)
                                              if kind == "defense" and r["name"] == n]})
        page = f"submissions/{kind}-{slug(n)}.html"
        subs.append({"kind": kind, "name": n, "page": page, "manifest": m,
                     "paper_url": paper_url(m.paper) if m else None})
        (out / "submissions").mkdir(exist_ok=True)
        (out / page).write_text(env.get_template("submission.html.j2").render(
            root="../", sub=subs[-1], scenarios=per_scenario, params=sorted((m.parameters if m else {}).items())))
    (out / "index.html").write_text(env.get_template("index.html.j2").render(
        root="", scenarios=scenarios, subs=subs, n_cells=len(cells), headline=results.headline(cells),
        calibrations=calibration.tables(cells),
        implanted_asr=results.IMPLANTED_ASR))
    (out / ".nojekyll").write_text("")
    (out / MARKER).write_text("built by `bdbench leaderboard build`; a rebuild empties this folder\n")
    return {"cells": len(cells), "scenarios": len(scenarios), "submissions": len(subs)}


ARCHIVE = "archive"  # leaderboard/results/archive/: superseded scenario versions and side experiments


def _scenario_folder(c: Result) -> Path:
    """The folder of a cell's scenario under the results root (<scenario>-v<version>, maybe under archive/)."""
    return Path(c.path).parent.parent.parent


def _code(git: dict) -> str:
    """A cell's code version: the commit, and the code files that differed from it when the cell ran."""
    commit = (git.get("commit") or "unknown")[:12]
    if not git.get("dirty"):
        return commit
    if not git.get("changed"):
        return f"{commit} + uncommitted changes"
    return f"{commit} + changes to {', '.join(git['changed'])}"
