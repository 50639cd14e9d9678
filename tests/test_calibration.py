"""The no-transfer protocol (downstream.protocol: none), the calibration table, and the RNG flow of scoring."""
import json

import pytest
import torch
import yaml

from benchmark import calibration
from benchmark.errors import ConfigError
from benchmark.registry import Registry
from benchmark.scenario import PluginSpec, load_scenario

from .conftest import REPO, Run, result, write_submission

# a defense that returns no model and a constant model score: the defended scores must equal the undefended ones
NOOP = """
from benchmark import Defense, DefenseOutput
class Plugin(Defense):
    def run(self, model, clean, ctx):
        self.seen = len(clean)
        return DefenseOutput(model_score=1.0, info={"clean_budget": len(clean)})
"""

DIGITS10 = {
    "name": "calib-digits", "version": 1,  # a smaller copy of the shipped calib-digits, so the site shows it
    "image": {"size": 32, "channels": 1},
    "upstream": {"data": {"source": "sklearn-digits"}, "arch": "test_resnet",
                 "train": {"epochs": 8, "lr": 0.05, "batch_size": 64, "augment": {"crop_pad": 2}}, "seed": 0},
    "attack": {"poison_rate": 0.1, "target": 0, "inject": {"epochs": 8, "lr": 0.05, "batch_size": 64}},
    "downstream": {"protocol": "none"},
    "defender": {"budget": 0.2},
    "attacks": ["badnets", "random-backdoor"],
    "defenses": ["noop"],
    "seeds": [0],
}


def write(tmp_path, data, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_protocol_none_takes_no_downstream_task_and_transfer_needs_one(tmp_path):
    sc = load_scenario(str(write(tmp_path, DIGITS10)))
    assert sc.downstream.protocol == "none" and not sc.downstream.transfers and sc.downstream.data is None
    bad = json.loads(json.dumps(DIGITS10))
    bad["downstream"]["data"] = {"source": "sklearn-digits"}
    with pytest.raises(ConfigError, match=r"downstream\.data.*protocol 'none'.*remove this key"):
        load_scenario(str(write(tmp_path, bad)))
    bad["downstream"] = {"protocol": "full", "train": {"epochs": 1, "lr": 0.01}}
    with pytest.raises(ConfigError, match=r"downstream\.data.*missing required key.*protocol: none"):
        load_scenario(str(write(tmp_path, bad)))


@pytest.fixture(scope="module")
def calib_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("calib")
    write_submission(home / "subs", "defense", "noop", NOOP)
    registry = Registry([REPO / "submissions", home / "subs"], entry_points=False)
    sc = load_scenario(str(write(home, DIGITS10)), registry)
    return home, registry, sc, Run(home, registry, sc, ["noop"])


def test_no_transfer_scores_the_backdoored_model_in_its_own_label_space(calib_env):
    home, registry, sc, run = calib_env
    base = next(c for c in run.cells if c["attack"]["id"] == "badnets" and c["defense"] is None)
    assert base["status"] == "ok"
    m = base["metrics"]
    assert {k: v for k, v in m["transfer"]["backdoored"].items() if k != "target"} == m["upstream"]["backdoored"]
    assert m["transfer"]["backdoored"]["target"] == sc.attack.target
    assert m["upstream"]["backdoored"]["asr"] > 0.8 and m["upstream"]["clean"]["asr"] < 0.2
    # the delivered model is the backdoored upstream model: no downstream stage was trained or recorded
    assert "downstream" not in base["artifacts"] and "downstream" not in [s for s, _ in run.runner.store.computed]


def test_the_defender_holds_untouched_upstream_samples(calib_env):
    home, registry, sc, run = calib_env
    r = run.runner
    spec = PluginSpec("badnets")
    planted = r.backdoored_upstream(spec, 0)
    from benchmark.stages import defend
    touched = r.env.attack(spec, planted).poison(r.data.up_train, sc.attack, r.ctx(0).generator(1)).indices
    clean = defend.defender_data(r.env, spec, planted, 0)
    n = len(r.data.up_train)
    assert abs(len(clean) - sc.defender.budget * n) <= r.data.up_train.num_classes
    # every image the defender holds is an original, unpoisoned training image with its true label
    up = r.data.up_train
    rows = {bytes(up.images[i].flatten().tolist()): int(up.labels[i]) for i in range(n)
            if not torch.isin(torch.tensor(i), touched)}
    assert all(rows.get(bytes(x.flatten().tolist())) == int(y) for x, y in zip(clean.images, clean.labels))
    assert next(c for c in run.cells if c["attack"]["id"] == "badnets" and c["defense"] is not None)[
        "info"]["clean_budget"] == len(clean)


@pytest.mark.parametrize("attack", ["badnets", "random-backdoor"])
def test_a_defense_that_returns_no_model_leaves_every_score_as_it_was(calib_env, attack):
    """Same triggered inputs with and without a defense: exactly the undefended CA/ASR/RA, and DER 0.5, also for
    an attack that draws a fresh random trigger per input (random-backdoor)."""
    home, registry, sc, run = calib_env
    base = next(c for c in run.cells if c["attack"]["id"] == attack and c["defense"] is None)
    cell = next(c for c in run.cells if c["attack"]["id"] == attack and (c["defense"] or {}).get("id") == "noop")
    before, after = base["metrics"]["transfer"]["backdoored"], cell["metrics"]["defense"]
    assert (after["ca"], after["asr"], after["ra"]) == (before["ca"], before["asr"], before["ra"])
    assert after["der"] == 0.5 and after["repaired"] is False


def test_random_backdoor_after_transfer_defended_equals_undefended(digits_env):
    """The same with transfer (t* chosen on triggered validation images first): the test set's triggers are the
    same draws in eval_transfer and in defend."""
    home, registry, sc, first, second = digits_env
    write_submission(home / "subs", "defense", "noop", NOOP)
    reg = Registry([REPO / "submissions", home / "subs"], entry_points=False)
    run = Run(home, reg, sc, [], seeds=(0,))
    cells = [c.to_dict() for c in run.runner.cell(PluginSpec("random-backdoor"), 0, [PluginSpec("noop")])]
    base = next(c for c in cells if c["defense"] is None)
    cell = next(c for c in cells if c["defense"] is not None)
    assert cell["status"] == "ok", cell.get("error")
    before, after = base["metrics"]["transfer"]["backdoored"], cell["metrics"]["defense"]
    assert (after["ca"], after["asr"], after["ra"]) == (before["ca"], before["asr"], before["ra"])
    assert after["der"] == 0.5


def _cell(attack, defense, seed, **m):
    d = {"ca": 0.8, "asr": 0.95, "ra": 0.0}
    d.update(m)
    up = {"clean": {"ca": 0.8, "asr": 0.0, "ra": 0.8}, "backdoored": {"ca": 0.8, "asr": 0.95, "ra": 0.0}}
    metrics = {"upstream": up, "transfer": {"clean": {**up["clean"], "target": 0},
                                            "backdoored": {"target": 0, "ca": 0.8, "asr": 0.95, "ra": 0.0}}}
    if defense is None:
        metrics["transfer"]["backdoored"] = {"target": 0, **d}
    else:
        metrics["defense"] = {"der": 0.5, "repaired": True, "input_auroc": None, "model_score": None, **d}
    return result(attack=attack, defense=defense, seed=seed, metrics=metrics, scenario="calib-cifar10")


def test_calibration_table_checks_each_expectation_on_our_mean():
    cells = [_cell("badnets", None, s, ca=0.80) for s in range(3)]
    cells += [_cell("badnets", "finetune", s, ca=0.78, asr=0.05) for s in range(3)]       # passes
    cells += [_cell("badnets", "anp", s, ca=0.70, asr=0.01) for s in range(3)]            # CA loss 0.10 > 0.05
    cells += [_cell("badnets", "neural-cleanse", s, ca=0.79, asr=0.1, model_score=1.5) for s in range(3)]
    cells += [_cell("badnets", "strip", s, ca=0.8, input_auroc=0.95) for s in range(3)]
    rows, ref = calibration.table(cells)
    by = {(r.attack, r.defense): r for r in rows}
    assert by[("badnets", "none")].verdict == "pass"
    assert by[("badnets", "finetune")].verdict == "pass"
    assert by[("badnets", "anp")].verdict == "FAIL"
    assert [e for e, v, ok in by[("badnets", "anp")].checks if not ok] == ["ca loss max 0.05"]
    assert by[("badnets", "neural-cleanse")].verdict == "FAIL"  # index 1.5 < 2
    assert by[("badnets", "strip")].verdict == "pass"
    assert by[("badnets", "finetune")].published == {"ca": 0.8996, "asr": 0.0148}
    assert by[("clean-upstream", "neural-cleanse")].verdict == "not run"
    # the reference rows come first, in the reference's order
    assert [(r.attack, r.defense) for r in rows][:2] == [("badnets", "none"), ("badnets", "finetune")]


def test_the_reference_table_names_its_sources():
    ref = calibration.reference()
    assert ref["scenario"] == "calib-cifar10" and "arxiv.org/abs/2206.12654" in ref["sources"]["backdoorbench"]
    assert load_scenario(ref["scenario"]).downstream.protocol == "none"


def _defended(name, code, finished, attack="badnets"):
    return result(attack=attack, defense=name, code=code, finished=finished, wall_time_s={"defense": 1.0})


def test_rows_from_earlier_code_or_before_a_harness_fix_are_marked(registry):
    from benchmark import results
    now = registry.code_hash("defense", "finetune")
    rows = results.defense_rows([_defended("finetune", now, "2026-12-08T00:00:00Z"),
                                 _defended("anp", "0" * 64, "2026-12-08T00:00:00Z"),
                                 _defended("strip", registry.code_hash("defense", "strip"), "2026-11-30T00:00:00Z",
                                           attack="random-backdoor")])
    results.stale(rows, registry)
    by = {r["defense"]: r for r in rows}
    assert not by["finetune"]["stale"] and by["anp"]["stale"] and not by["strip"]["stale"]
    assert by["strip"]["affected"] and not by["finetune"]["affected"]


@pytest.mark.slow
def test_calibrated_behaviour_on_digits(tmp_path):
    """calib-digits, BadNets, seed 0 (about 6 minutes on 2 CPU cores): what the calibration measured there, pinned.
    STRIP separates triggered inputs; Neural Cleanse's smallest reversed trigger is the attack's target, far below
    the other classes' (its anomaly index stays under 2 on digits: the clean classes' norms spread widely, see
    docs/calibration.md); ANP prunes neurons at its mask threshold and lowers ASR."""
    registry = Registry([REPO / "submissions"], entry_points=False)
    sc = load_scenario("calib-digits", registry)
    sc.clean_seeds = []  # no controls: this test reads the backdoored model's cells only
    sc.attacks = [a for a in sc.attacks if a.id == "badnets"]
    # each defense in its own process, as `bdbench run` does (in this process Neural Cleanse ran 3-4x slower)
    run = Run(tmp_path, registry, sc, ["strip", "neural-cleanse", "anp"], isolate="process")
    cells = [c for c in run.cells if c["attack"]["id"] == "badnets" and c["role"] != "clean-upstream"]
    base = next(c for c in cells if c["defense"] is None)["metrics"]["upstream"]["backdoored"]
    assert base["asr"] >= 0.9 and base["ca"] >= 0.95
    strip = run.cell("strip")["metrics"]["defense"]
    assert strip["input_auroc"] >= 0.9
    nc = run.cell("neural-cleanse")["info"]
    norms = torch.tensor(nc["norms"])
    assert nc["target_guess"] == sc.attack.target and norms[sc.attack.target] < 0.2 * norms.median()
    anp = run.cell("anp")
    assert anp["info"]["pruned_neurons"] > 0 and anp["metrics"]["defense"]["asr"] < base["asr"]


def test_the_calibration_results_page_is_generated_from_the_committed_results():
    """docs/calibration-results.md is `bdbench calibration --markdown` of the committed results, never typed."""
    page = (REPO / "docs" / "calibration-results.md").read_text()
    assert page == calibration.page(REPO / "leaderboard" / "results"), \
        "regenerate it: bdbench calibration --markdown > docs/calibration-results.md"


def test_the_site_shows_the_calibration_table(calib_env, tmp_path):
    from benchmark import site
    home, registry, sc, run = calib_env
    site.build(home / "results", tmp_path / "site", registry)
    html = (tmp_path / "site" / "index.html").read_text()
    section = html[html.index('id="calibration-calib-digits"'):]
    section = section[:section.index("</section>")]
    assert "published figures are those of the setting calib-cifar10" in section
    assert "<td class=\"l\">badnets</td><td class=\"l\">none</td>" in section and "0.950" in section


def test_a_grid_redoes_cells_scored_before_a_harness_fix(tmp_path):
    """tasks.finished: a random-backdoor defense cell finished before the scoring fix is not finished."""
    from benchmark import tasks
    sc = load_scenario(str(write(tmp_path, DIGITS10)))
    for finished, ok in (("2026-12-01T00:00:00Z", False), ("2026-12-08T00:00:00Z", True)):
        cell = result(attack="random-backdoor", defense="x", finished=finished).to_dict()
        cell["scenario"].update(name=sc.name, version=sc.version, sha256=sc.sha256, recipe=sc.recipe)
        p = tmp_path / f"{finished[:10]}.json"
        p.write_text(json.dumps(cell))
        assert tasks.finished(p, sc) is ok
