"""`bdbench` command line."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import __version__


def _home() -> Path:
    return Path(os.environ.get("BDBENCH_HOME", Path.home() / ".cache" / "bdbench"))


def _registry(args):
    from .registry import Registry, default_roots
    return Registry(default_roots() + [Path(p) for p in args.submissions or []])


def cmd_run(args) -> int:
    import torch

    from .device import describe, pick
    from .pipeline import Runner
    from .report import print_table
    from .scenario import PluginSpec, load_scenario
    from .store import Store

    registry = _registry(args)
    sc = load_scenario(args.scenario, registry)
    attacks = [PluginSpec(n) for n in args.attack] if args.attack else None
    defenses = [PluginSpec(n) for n in args.defense] if args.defense is not None else None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick(args.device)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    log(f"bdbench {__version__} · scenario {sc.name} v{sc.version} · device {describe(device)} · store {args.workdir}")
    runner = Runner(sc, registry, Store(Path(args.workdir)), Path(args.results), device,
                    progress=not args.quiet, log=log)
    t0 = time.perf_counter()
    cells = runner.run(attacks, defenses, args.seeds)
    wall = time.perf_counter() - t0
    print_table(cells, f"{sc.name} v{sc.version}")
    failed = sum(c["status"] != "ok" for c in cells)
    print(f"{len(cells)} cells ({failed} failed) in {wall:.1f} s; results in {args.results}/{sc.name}-v{sc.version}/; "
          f"{len(runner.store.computed)} stages computed, the rest reused from {args.workdir}")
    return 1 if failed and args.strict else 0


def cmd_list(args) -> int:
    from .scenario import shipped_scenarios

    registry = _registry(args)
    what = args.what
    if what in (None, "scenarios"):
        print("scenarios: " + ", ".join(shipped_scenarios()))
    for kind in ("attack", "defense"):
        if what in (None, kind + "s"):
            print(f"{kind}s:")
            for n in registry.names(kind):
                m = registry.manifest(kind, n)
                print(f"  {n:<16} {m.paper.split('.')[0][:70]}  [{m.folder}]")
    return 0


def cmd_show(args) -> int:
    import yaml

    from .config import to_dict
    from .scenario import load_scenario

    sc = load_scenario(args.scenario, _registry(args))
    d = to_dict(sc)
    print(yaml.safe_dump(d, sort_keys=False))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bdbench", description="Backdoor attacks and defenses under transfer learning.")
    p.add_argument("--version", action="version", version=f"bdbench {__version__}")
    sub = p.add_subparsers(dest="cmd")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--submissions", action="append", metavar="DIR",
                        help="another folder holding attacks/ and defenses/ submissions (repeatable)")

    r = sub.add_parser("run", parents=[common], help="run a scenario (default: the embedded 'digits')")
    r.add_argument("scenario", nargs="?", default="digits", help="shipped scenario name or path to a YAML file")
    r.add_argument("--attack", action="append", metavar="NAME", help="run only these attacks (repeatable)")
    r.add_argument("--defense", nargs="*", metavar="NAME", help="run only these defenses (none: no defense)")
    r.add_argument("--seeds", nargs="+", type=int, help="override the scenario's seeds")
    r.add_argument("--device", default="auto", help="auto (CUDA with AMP if present, else CPU), cpu, cuda, cuda:1")
    r.add_argument("--workdir", default=str(_home()), help="artifact store and data cache [$BDBENCH_HOME or ~/.cache/bdbench]")
    r.add_argument("--results", default="bdbench-results", help="where result files go [./bdbench-results]")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.add_argument("--strict", action="store_true", help="exit 1 if any cell failed")
    r.set_defaults(fn=cmd_run)

    ls = sub.add_parser("list", parents=[common], help="list scenarios, attacks and defenses")
    ls.add_argument("what", nargs="?", choices=["scenarios", "attacks", "defenses"])
    ls.set_defaults(fn=cmd_list)

    sh = sub.add_parser("show", parents=[common], help="validate a scenario and print it with defaults filled in")
    sh.add_argument("scenario")
    sh.set_defaults(fn=cmd_show)
    return p


def main(argv=None) -> int:
    from .errors import BenchError

    args = parser().parse_args(argv)
    if args.cmd is None:  # `bdbench` alone runs the embedded default
        args = parser().parse_args(["run", *(argv or [])])
    try:
        return args.fn(args)
    except BenchError as e:
        print(f"bdbench: error: {e}", file=sys.stderr)
        return 2
