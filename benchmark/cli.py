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


def _scenario(name: str, registry):
    """A shipped scenario, a scenario file, or a shipped grid's expansion by name (the leaderboard's names)."""
    from .errors import BenchError
    from .gridfile import grid_expansion
    from .scenario import load_scenario, names_a_file
    try:
        return load_scenario(name, registry)
    except BenchError:
        if names_a_file(name):
            raise
        found = grid_expansion(name, registry)
        if found is None:
            raise
        return found[1]


def cmd_run(args) -> int:
    import torch

    from .device import describe, pick
    from .isolation import resolve_mode
    from .pipeline import Runner
    from .plan import preflight
    from .report import print_table
    from .scenario import PluginSpec
    from .store import Store

    registry = _registry(args)
    sc = _scenario(args.scenario, registry)
    preflight(sc, registry)
    pick_ = lambda n, specs: next((s for s in specs if s.id == n), None) or PluginSpec(n)  # noqa: E731
    attacks = [pick_(n, sc.attacks) for n in args.attack] if args.attack else None
    defenses = [pick_(n, sc.defenses) for n in args.defense] if args.defense is not None else None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick(args.device)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    log(f"bdbench {__version__} · scenario {sc.name} v{sc.version} · device {describe(device)} · store {args.workdir}")
    # a default sandbox falls back to a plain process, loudly; one asked for by name is required
    isolate = resolve_mode(_isolation(args), refuse=args.isolation == "sandbox",
                           log=lambda m: print(m, file=sys.stderr, flush=True))
    runner = Runner(sc, registry, Store(Path(args.workdir)), Path(args.results), device,
                    progress=not args.quiet, log=log, zoo=_zoo(args), isolate=isolate)
    t0 = time.perf_counter()
    cells = runner.run(attacks, defenses, args.seeds)
    wall = time.perf_counter() - t0
    print_table(cells, f"{sc.name} v{sc.version}")
    failed = sum(not c.ok for c in cells)
    print(f"{len(cells)} cells ({failed} failed) in {wall:.1f} s; results in {args.results}/{sc.name}-v{sc.version}/; "
          f"{len(runner.store.computed)} stages computed, the rest reused from {args.workdir}")
    return 1 if failed and args.strict else 0


def _isolation(args) -> str:
    from .errors import BenchError
    if args.no_isolation:
        if args.isolation not in (None, "none"):
            raise BenchError(f"--no-isolation contradicts --isolation {args.isolation}; give one of them")
        return "none"
    return args.isolation or "sandbox"


def cmd_grid(args) -> int:
    from . import grid
    from .report import print_table
    from .results import load, scenario_key

    from .device import pick
    from .isolation import resolve_mode
    registry = _registry(args)
    pick(args.device)  # a clear error for a device this machine does not have, before any task starts
    # results of a grid are meant for the leaderboard: no sandbox, no run, unless --isolation says otherwise
    isolate = resolve_mode(_isolation(args), refuse=True)
    workers = args.workers or _default_workers(args.device)
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    counts = grid.run(Path(args.grid), home=Path(args.workdir), results=Path(args.results), registry=registry,
                      executor=args.executor, workers=workers, threads=threads, device=args.device,
                      isolate=isolate, address=args.address, gpus_per_task=args.gpus_per_task,
                      progress=not args.quiet, log=log,
                      only={"scenarios": args.scenario, "attacks": args.attack, "defenses": args.defense,
                            "seeds": args.seeds, "clean_seeds": args.clean_seeds})
    if not args.quiet:
        cells = load(Path(args.results))
        for key in counts["scenarios"]:  # the versions this grid ran, not older files of the same name
            print_table([c for c in cells if scenario_key(c) == key], "{} v{}".format(*key))
    print(f"grid: {counts['tasks']} tasks, {counts['skipped']} already finished, {counts['ran']} run "
          f"({counts['failed_tasks']} failed tasks, {counts['failed_cells']} failed cells, {counts['computed']} stages "
          f"computed) in {counts['wall_s']:.1f} s; results in {args.results}/")
    for e in counts["errors"]:
        print(f"  failed: {e}")
    return 1 if counts["failed_tasks"] or (args.strict and counts["failed_cells"]) else 0


def _default_workers(device: str) -> int:
    import torch
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, (os.cpu_count() or 1) // 4)  # a CPU worker wants a few threads


def cmd_plan(args) -> int:
    from .gridfile import load_grid
    from .plan import preflight, print_plan
    registry = _registry(args)
    _, scenarios = load_grid(Path(args.grid), registry)
    for sc in scenarios:
        preflight(sc, registry)
    print_plan(scenarios, args.tflops)
    if args.results:
        from .plan import print_progress
        print_progress(scenarios, Path(args.results), registry)
    print(f"valid: {len(scenarios)} scenario(s); every plugin built with its parameters, every timm architecture, "
          "and the data folders, classes and target that are at hand checked")
    return 0


def _zoo(args):
    from .zoo import SHIPPED, Zoo
    if getattr(args, "no_zoo", False):
        return None
    return Zoo(args.zoo or SHIPPED)


def cmd_pull(args) -> int:
    from . import hub

    zoo = _zoo(args)
    if args.scenario:
        entries = zoo.for_scenario(_scenario(args.scenario, None))
        if not entries:
            print(f"{zoo.path} lists no checkpoint for scenario {args.scenario}")
    else:
        if not args.name:
            raise SystemExit("bdbench pull: give a checkpoint NAME or --scenario S")
        entries = [zoo[args.name]]
    for c in entries:
        paths = hub.pull(c)
        print(f"{c.name}: {c.repo}@{c.revision[:12]} verified (sha256 {c.model.sha256[:12]}…) -> {paths['model']}")
    return 0


def cmd_derive(args) -> int:
    from . import derive
    if args.name is None:
        for d in sorted(derive.REGISTRY.values(), key=lambda d: d.name):
            src = f"{d.id}@{d.revision}" if d.id else f"download: {d.where}"
            print(f"{d.name}: {d.description} [{src}; content {'pinned' if d.sha256 else 'not yet pinned'}]")
        return 0
    derive.derive(args.name, Path(args.workdir), Path(args.source) if args.source else None)
    return 0


def cmd_publish(args) -> int:
    import os
    import torch
    from . import hub
    from .pipeline import Runner
    from .store import Store
    from .zoo import AttackRef, Checkpoint, FileRef, ScenarioRef, entry_yaml

    registry = _registry(args)
    sc = _scenario(args.scenario, registry)
    runner = Runner(sc, registry, Store(Path(args.workdir)), Path("."), torch.device("cpu"), progress=False,
                    log=lambda m: None, zoo=None, build=False)
    if args.stage == "upstream":
        art, attack_ref, scores = runner.clean_upstream(), None, None
        scores = dict(art.meta.get("metrics", {}))
    else:
        spec = next((a for a in sc.attacks if a.id == args.attack), None)
        if spec is None:
            raise SystemExit(f"bdbench publish: scenario {sc.name} has no attack '{args.attack}' "
                             f"(it has {', '.join(a.id for a in sc.attacks)})")
        art = runner.backdoored_upstream(spec, args.seed)
        params = registry.resolve_params("attack", spec.name, spec.params)
        attack_ref = AttackRef(spec.name, params, sc.attack.target, sc.attack.poison_rate)
        scores = {f"upstream_{k}": v for k, v in runner.eval_upstream(art, spec, art).items()}
    folder = Path(args.out or f"bdbench-publish/{args.repo.replace('/', '--')}")
    trigger = art.folder / art.meta["tensors"]["attack"]["file"] if art.meta.get("tensors", {}).get("attack") else None
    bd = {"stage": args.stage, "scenario": {"name": sc.name, "version": sc.version}, "seed": args.seed,
          "attack": None if attack_ref is None else {"name": attack_ref.name, "params": attack_ref.params,
                                                     "target": attack_ref.target,
                                                     "poison_rate": attack_ref.poison_rate},
          "scores": scores, "artifact": art.key, "licence": args.licence}
    hub.write_folder(folder, art.folder / "model.safetensors", art.meta["model"]["config"], bd, trigger)
    token = os.environ.get("HF_TOKEN")
    revision = hub.upload(folder, args.repo, token) if token and not args.dry_run else None
    entry = Checkpoint(
        name=args.name or (f"{sc.name}-v{sc.version}-{args.stage if attack_ref is None else args.attack}"
                           f"-seed{args.seed}"),
        repo=args.repo, revision=revision or "0" * 40,
        model=FileRef("model.safetensors", hub.file_sha256(folder / "model.safetensors")),
        config=art.meta["model"]["config"], scenario=ScenarioRef(sc.name, sc.version), stage=args.stage, seed=args.seed,
        attack=attack_ref,
        trigger=FileRef("trigger.safetensors", hub.file_sha256(folder / "trigger.safetensors")) if trigger else None,
        scores=scores, licence=args.licence)
    print(f"wrote {folder}/ (model.safetensors, config.json, README.md{', trigger.safetensors' if trigger else ''})")
    if revision:
        print(f"uploaded to {hub.endpoint()}/{args.repo} at revision {revision}")
    else:
        print("not uploaded (no HF_TOKEN, or --dry-run): push this folder, then set 'revision' to the commit sha")
    print("zoo entry for benchmark/zoo.yaml:")
    print(entry_yaml(entry))
    return 0


def cmd_leaderboard(args) -> int:
    from . import site
    t0 = time.perf_counter()
    counts = site.build(Path(args.results), Path(args.out), _registry(args))
    print(f"built {args.out}/index.html from {counts['cells']} cells ({counts['scenarios']} scenarios, "
          f"{counts['submissions']} submission pages) in {time.perf_counter() - t0:.2f} s")
    return 0


def cmd_headline(args) -> int:
    import fnmatch

    from . import results
    from .report import headline_markdown, print_headline
    cells = [c for c in results.load(Path(args.results))
             if not args.scenario or any(fnmatch.fnmatch(c.scenario.name, g) for g in args.scenario)]
    if args.markdown:
        from .gridfile import tiers
        print(headline_markdown(cells, tiers()), end="")
    else:
        print_headline(cells)
    return 0


def cmd_compare(args) -> int:
    from .compare import compare
    compare(Path(args.results), args.scenario, args.names, args.version)
    return 0


def cmd_calibration(args) -> int:
    from . import calibration, results
    if args.markdown and not args.scenario:  # docs/calibration-results.md: every calibration scenario
        print(calibration.page(Path(args.results)), end="")
        return 0
    rows, ref = calibration.table(results.load(Path(args.results)), args.scenario)
    if args.markdown:
        print(calibration.markdown(rows, ref), end="")
    else:
        calibration.print_table(rows, ref)
    return 1 if args.strict and any(r.verdict == "FAIL" for r in rows) else 0


def cmd_validate(args) -> int:
    from .validate import validate
    problems = validate(Path(args.path), time_limit=args.time_limit, workdir=Path(args.workdir))
    for p in problems:
        print(f"FAIL {p}")
    print("valid" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1


def cmd_list(args) -> int:
    from .gridfile import expansion_names
    from .scenario import shipped_scenarios

    registry = _registry(args)
    what = args.what
    if what in (None, "scenarios"):
        print("scenarios: " + ", ".join(shipped_scenarios()))
        for grid, names in expansion_names().items():
            print(f"grid {grid} (bdbench grid {grid}; one of them: bdbench run NAME): " + ", ".join(names))
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

    sc = _scenario(args.scenario, _registry(args))
    d = to_dict(sc)
    print(yaml.safe_dump(d, sort_keys=False))
    return 0


ISOLATION_HELP = ("how each defense runs: sandbox (default; its own process in a bubblewrap sandbox that sees only "
                  "its inputs), process (its own process, no sandbox: for trusted code or machines without user "
                  "namespaces), none (in this process, for debugging)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bdbench", description="Backdoor attacks and defenses under transfer learning.")
    p.add_argument("--version", action="version", version=f"bdbench {__version__}")
    sub = p.add_subparsers(dest="cmd")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--submissions", action="append", metavar="DIR",
                        help="another folder holding attacks/ and defenses/ submissions (repeatable)")

    r = sub.add_parser("run", parents=[common], help="run a scenario (default: the embedded 'digits')")
    r.add_argument("scenario", nargs="?", default="digits", help="shipped scenario name or path to a YAML file")
    r.add_argument("--attack", action="extend", nargs="+", metavar="NAME", help="run only these attacks")
    r.add_argument("--defense", nargs="*", metavar="NAME", help="run only these defenses (none: no defense)")
    r.add_argument("--seeds", nargs="+", type=int, help="override the scenario's seeds")
    r.add_argument("--device", default="auto", help="auto (CUDA with AMP if present, else CPU), cpu, cuda, cuda:1")
    r.add_argument("--workdir", default=str(_home()),
                   help="artifact store and data cache [$BDBENCH_HOME or ~/.cache/bdbench]")
    r.add_argument("--results", default="bdbench-results", help="where result files go [./bdbench-results]")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.add_argument("--strict", action="store_true", help="exit 1 if any cell failed")
    r.add_argument("--zoo", metavar="FILE", help="zoo registry of published checkpoints [benchmark/zoo.yaml]")
    r.add_argument("--no-zoo", action="store_true", help="build every upstream checkpoint locally")
    r.add_argument("--isolation", choices=["sandbox", "process", "none"], default=None, help=ISOLATION_HELP)
    r.add_argument("--no-isolation", action="store_true", help="the same as --isolation none")
    r.set_defaults(fn=cmd_run)

    g = sub.add_parser("grid", parents=[common], help="run a grid of scenarios x attacks x defenses x seeds, resumably")
    g.add_argument("grid", help="grid YAML (or a single scenario)")
    g.add_argument("--scenario", action="extend", nargs="+", metavar="GLOB", help="only scenarios matching these globs")
    g.add_argument("--attack", action="extend", nargs="+", metavar="ID", help="only these attacks")
    g.add_argument("--defense", nargs="*", metavar="ID", help="only these defenses (none given: no defense)")
    g.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
    g.add_argument("--clean-seeds", nargs="*", type=int, help="seeds of the clean-upstream controls")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: a process pool on this machine; ray: Ray tasks (--address for a cluster)")
    g.add_argument("--workers", type=int, default=0, help="local workers [one per GPU, else cores / 4]")
    g.add_argument("--threads", type=int, default=0, help="torch threads per task [cores / workers]")
    g.add_argument("--address", default=None, help="Ray cluster address ('auto' inside a cluster); none: a local Ray")
    g.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs each Ray task requests")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda")
    g.add_argument("--workdir", default=str(_home()), help="artifact store (shared by all workers) [$BDBENCH_HOME]")
    g.add_argument("--results", default="bdbench-results", help="where result files go")
    g.add_argument("--quiet", action="store_true")
    g.add_argument("--strict", action="store_true", help="exit 1 if any cell failed")
    g.add_argument("--isolation", choices=["sandbox", "process", "none"], default=None,
                   help=ISOLATION_HELP + "; a grid refuses to start without a sandbox unless this says otherwise")
    g.add_argument("--no-isolation", action="store_true", help="the same as --isolation none")
    g.set_defaults(fn=cmd_grid)

    pl_ = sub.add_parser("plan", parents=[common], help="validate a grid or scenario; print its cells and rough cost")
    pl_.add_argument("grid", help="grid YAML or scenario (name or path)")
    pl_.add_argument("--tflops", type=float, default=27.0,
                     help="sustained TFLOP/s to convert FLOPs into hours [27: this harness's training loop, resnet50 "
                     "at 224 px, batch 32, bfloat16, measured on one H200 by ci/gpu_throughput.py]")
    pl_.add_argument("--results", metavar="DIR", help="also say what of the grid is finished in DIR and how long "
                     "the rest takes at the stage times measured there (e.g. leaderboard/results)")
    pl_.set_defaults(fn=cmd_plan)

    pl = sub.add_parser("pull", help="download published checkpoints at their pinned revision and verify them")
    pl.add_argument("name", nargs="?", help="checkpoint name in the zoo registry")
    pl.add_argument("--scenario", help="every checkpoint the zoo lists for this scenario")
    pl.add_argument("--zoo", metavar="FILE", help="zoo registry [benchmark/zoo.yaml]")
    pl.set_defaults(fn=cmd_pull)

    pb = sub.add_parser("publish", parents=[common], help="turn a finished stage into a Hub repository")
    pb.add_argument("scenario")
    pb.add_argument("--stage", choices=["upstream", "backdoor"], default="backdoor")
    pb.add_argument("--attack", help="attack id in the scenario (stage backdoor)")
    pb.add_argument("--seed", type=int, default=0)
    pb.add_argument("--repo", required=True, help="ORG/NAME on the Hub")
    pb.add_argument("--name", help="the zoo entry's name [SCENARIO-vN-ATTACK-seedS]")
    pb.add_argument("--licence", default="apache-2.0")
    pb.add_argument("--out", help="folder to write [bdbench-publish/ORG--NAME]")
    pb.add_argument("--dry-run", action="store_true", help="write the folder only, even with HF_TOKEN set")
    pb.add_argument("--workdir", default=str(_home()), help="the artifact store the stage was run in")
    pb.set_defaults(fn=cmd_publish)

    da = sub.add_parser("data", help="datasets drawn from public sources (the subsets a paper used)")
    das = da.add_subparsers(dest="data_cmd", required=True)
    dd = das.add_parser("derive", help="draw a derived dataset into <workdir>/derived/NAME (no NAME: list them)")
    dd.add_argument("name", nargs="?", help="a derivation of benchmark/derive.py, e.g. matsuo-lfw-bush")
    dd.add_argument("--source", metavar="DIR", help="read a local copy of the source instead of the Hub (a folder "
                                                     "datasets.load_dataset reads; needed where the source is not on "
                                                     "the Hub)")
    dd.add_argument("--workdir", default=str(_home()), help="where scenarios look for it [$BDBENCH_HOME]")
    dd.set_defaults(fn=cmd_derive)

    lb = sub.add_parser("leaderboard", parents=[common], help="the static leaderboard site")
    lbs = lb.add_subparsers(dest="action", required=True)
    # --submissions before or after the action; SUPPRESS so the action's absent flag keeps the one given before it
    common_sub = argparse.ArgumentParser(add_help=False)
    common_sub.add_argument("--submissions", action="append", metavar="DIR", default=argparse.SUPPRESS,
                            help="another folder holding attacks/ and defenses/ submissions (repeatable)")
    b = lbs.add_parser("build", parents=[common_sub], help="build the site from result files")
    b.add_argument("out", help="output folder: new, empty, or an earlier site (emptied first)")
    b.add_argument("--results", default="leaderboard/results", help="result files [leaderboard/results]")
    b.set_defaults(fn=cmd_leaderboard)
    hl = lbs.add_parser("headline", parents=[common_sub],
                        help="print the cross-scenario transfer table in the terminal")
    hl.add_argument("--results", default="leaderboard/results", help="result files [leaderboard/results]")
    hl.add_argument("--scenario", action="extend", nargs="+", metavar="GLOB", help="only scenarios matching")
    hl.add_argument("--markdown", action="store_true",
                    help="print the page docs/findings.md is generated as (a Markdown table and its notes)")
    hl.set_defaults(fn=cmd_headline)

    ca = sub.add_parser("calibration", help="the no-transfer calibration scenario beside published figures")
    ca.add_argument("--results", default="leaderboard/results", help="result files [leaderboard/results]")
    ca.add_argument("--scenario", help="a no-transfer scenario [the reference's: calib-cifar10]")
    ca.add_argument("--strict", action="store_true", help="exit 1 if a row misses its expectation")
    ca.add_argument("--markdown", action="store_true", help="print a Markdown page (docs/calibration-results.md)")
    ca.set_defaults(fn=cmd_calibration)

    cp = sub.add_parser("compare", help="compare defenses (or attacks) of one scenario in the terminal")
    cp.add_argument("scenario")
    cp.add_argument("names", nargs="+", help="defense ids (or attack ids); differences are against the first")
    cp.add_argument("--version", type=int, help="scenario version [the newest with results]")
    cp.add_argument("--results", default="leaderboard/results")
    cp.set_defaults(fn=cmd_compare)

    va = sub.add_parser("validate", help="check a submission folder: manifest, entry point, interface, a tiny run")
    va.add_argument("path", help="submissions/attacks/NAME or submissions/defenses/NAME")
    va.add_argument("--time-limit", type=int, default=600, help="seconds for the tiny run [600]")
    va.add_argument("--workdir", default=str(_home()), help="artifact store for the tiny run (cached upstream work)")
    va.set_defaults(fn=cmd_validate)

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
