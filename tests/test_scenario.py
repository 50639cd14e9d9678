"""Malformed scenarios give errors that name the file and the key."""
import copy
import subprocess
import sys

import pytest
import yaml

from benchmark.errors import ConfigError, UnknownPluginError
from benchmark.scenario import SHIPPED, load_scenario, shipped_scenarios

BASE = yaml.safe_load((SHIPPED / "digits.yaml").read_text())


def write(tmp_path, data, name="sc.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def mutate(path, value, delete=False):
    d = copy.deepcopy(BASE)
    node = d
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


def test_shipped_scenarios_load(registry):
    assert "digits" in shipped_scenarios()
    for name in shipped_scenarios():
        sc = load_scenario(name, registry)
        assert sc.version >= 1 and sc.sha256 and sc.attacks


@pytest.mark.parametrize("path,value,delete,key,words", [
    (("upstream", "arch"), None, True, "upstream.arch", "missing required key"),
    (("upstream", "train", "epochs"), "ten", False, "upstream.train.epochs", "expected int"),
    (("upstream", "train", "lr"), True, False, "upstream.train.lr", "expected float"),
    (("attack", "poison_rate"), 1.5, False, "attack.poison_rate", "(0, 1)"),
    (("downstream", "protocol"), "half", False, "downstream.protocol", "must be one of"),
    (("downstream", "protocol"), "last_blocks", False, "downstream.blocks", "needs 'blocks'"),
    (("upstream", "arch"), "resnet-eighteen", False, "upstream.arch", "unknown timm model"),
    (("upstream", "data", "source"), "hub", False, "upstream.data.id", "needs 'id'"),
    (("upstream", "data", "train_per_class"), 0, False, "upstream.data.train_per_class", "positive number"),
    (("upstream", "dropout"), 0.1, False, "upstream.dropout", "unknown key"),
    (("seeds",), [0, "one"], False, "seeds[1]", "expected int"),
    (("attacks",), [{"params": {}}], False, "attacks[0].name", "missing required key"),
    (("version",), None, True, "version", "missing required key"),
])
def test_malformed_scenario_names_file_and_key(tmp_path, path, value, delete, key, words):
    p = write(tmp_path, mutate(path, value, delete))
    with pytest.raises(ConfigError) as e:
        load_scenario(str(p))
    assert e.value.key == key
    assert str(p) in str(e.value) and words in str(e.value)


def test_unknown_plugin_lists_known_ones(tmp_path, registry):
    p = write(tmp_path, mutate(("defenses",), ["finetune", "magic-wand"]))
    with pytest.raises(UnknownPluginError) as e:
        load_scenario(str(p), registry)
    msg = str(e.value)
    assert "magic-wand" in msg and "finetune" in msg and "linf-pruning" in msg and str(p) in msg
    assert "defenses[1]" in msg


def test_bad_plugin_parameter_names_the_scenario(tmp_path, registry):
    p = write(tmp_path, mutate(("attacks",), [{"name": "badnets", "params": {"sise": 4}}]))
    with pytest.raises(Exception, match="has no parameter 'sise'") as e:
        load_scenario(str(p), registry)
    assert str(p) in str(e.value)


def test_not_yaml_and_unknown_name(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_scenario(str(p))
    with pytest.raises(Exception, match="Shipped scenarios: .*digits"):
        load_scenario("no-such-scenario")


def test_duplicate_plugin_entries_need_labels(tmp_path):
    p = write(tmp_path, mutate(("attacks",), ["badnets", "badnets"]))
    with pytest.raises(ConfigError, match="distinct 'label'"):
        load_scenario(str(p))
    ok = write(tmp_path, mutate(("attacks",), ["badnets", {"name": "badnets", "label": "badnets-a2a",
                                                           "params": {"mode": "all-to-all"}}]), "ok.yaml")
    assert [a.id for a in load_scenario(str(ok)).attacks] == ["badnets", "badnets-a2a"]


def test_cli_reports_a_malformed_scenario_and_exits_2(tmp_path):
    p = write(tmp_path, mutate(("upstream", "train", "epochs"), "ten"))
    r = subprocess.run([sys.executable, "-m", "benchmark", "run", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "upstream.train.epochs" in r.stderr and str(p) in r.stderr and "Traceback" not in r.stderr


def test_stage_keys_of_the_default_scenario_are_stable():
    """Artifact keys hash the scenario's sections; a new optional setting must not change the keys of
    scenarios that leave it at its default (config.ADDED), or every cached stage would be rebuilt."""
    from benchmark.config import to_dict
    from benchmark.store import key_of
    sc = load_scenario("digits")
    spec = {"image": to_dict(sc.image), "upstream": to_dict(sc.upstream)}
    assert "pretrained" not in spec["upstream"] and "n_train" not in spec["upstream"]["data"]
    assert key_of("upstream", spec) == "d1c742b002c4294456f1ac3b"


@pytest.mark.parametrize("path,value,key", [
    (("name",), "../../etc", "name"),
    (("name",), "my scenario", "name"),
    (("attacks",), [{"name": "badnets", "label": "a/b"}], "attacks[0]"),
    (("seeds",), [0, 1, 0], "seeds"),
])
def test_names_become_paths_and_seeds_are_distinct(tmp_path, path, value, key):
    """Scenario and plugin names are folder names of the results; a repeated seed would count twice."""
    p = write(tmp_path, mutate(path, value))
    with pytest.raises(ConfigError) as e:
        load_scenario(str(p))
    assert e.value.key == key and str(p) in str(e.value)


def test_non_utf8_scenario_names_the_file(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: d\xe9j\xe0\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as e:
        load_scenario(str(p))
    assert str(p) in str(e.value)


@pytest.mark.parametrize("path,value,key,words", [
    (("upstream", "data"), {"source": "local", "path": "no/such/folder"}, "upstream.data.path", "does not exist"),
    (("upstream", "data"), {"source": "sklearn-digits", "classes": [0, 11]}, "upstream.data.classes",
     "labels [11] do not occur"),
    (("attack", "target"), 7, "attack.target", "does not exist upstream (5 classes"),
])
def test_preflight_catches_what_would_fail_after_training(tmp_path, registry, path, value, key, words):
    from benchmark.plan import preflight
    sc = load_scenario(str(write(tmp_path, mutate(path, value))), registry)
    with pytest.raises(ConfigError) as e:
        preflight(sc, registry)
    assert e.value.key == key and words in str(e.value) and str(sc.file) in str(e.value)


def test_preflight_builds_every_plugin_with_its_parameters(tmp_path, registry):
    from benchmark.errors import BenchError
    from benchmark.plan import preflight
    preflight(load_scenario("digits", registry), registry)  # the shipped default passes
    # a value its declaration refuses (submission.yaml: alpha in (0, 1]), named with the scenario's file
    f = write(tmp_path, mutate(("attacks",), [{"name": "blended", "params": {"alpha": 1.5}}]))
    with pytest.raises(BenchError, match=r"attacks\[0\].*parameter 'alpha' must lie in \(0, 1\], got 1.5") as e:
        load_scenario(str(f), registry)  # refused on loading, before anything runs
    assert str(f) in str(e.value)
    # a rule across parameters, which the plugin checks itself (p_attack + p_cross < 1)
    sc = load_scenario(str(write(tmp_path, mutate(("attacks",), [
        {"name": "input-aware", "params": {"p_attack": 0.6, "p_cross": 0.5}}]))), registry)
    with pytest.raises(BenchError, match=r"attacks\[0\].*rejected its parameters") as e:
        preflight(sc, registry)
    assert str(sc.file) in str(e.value)
