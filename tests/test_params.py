"""Declared plugin parameters (benchmark.params): parsed from submission.yaml, checked by the harness."""
import math

import pytest

from benchmark.config import Invalid
from benchmark.errors import BenchError, ConfigError
from benchmark.params import Interval, declare, resolve
from benchmark.registry import Registry
from tests.conftest import write_submission


@pytest.mark.parametrize("text, inside, outside", [
    ("[0, 1]", [0, 0.5, 1], [-0.01, 1.01]),
    ("(0, 1]", [1e-9, 1], [0, 1.5]),
    ("(0, 0.5)", [0.25], [0, 0.5]),
    ("[1, inf)", [1, 10**9], [0, 0.99]),
    ("(-inf, 0]", [-1e9, 0], [1e-9]),
])
def test_interval_membership(text, inside, outside):
    i = Interval.parse(text, "k")
    assert all(v in i for v in inside) and not any(v in i for v in outside)
    assert str(Interval.parse(str(i), "k")) == str(i)  # prints as it parses


@pytest.mark.parametrize("text", ["0, 1", "[1, 0]", "[a, 1]", "{0, 1}", ""])
def test_a_malformed_interval_names_its_key(text):
    with pytest.raises(Invalid) as e:
        Interval.parse(text, "parameters.x.range")
    assert e.value.key == "parameters.x.range"


def test_a_bare_default_declares_its_type():
    p = declare("n", 3)
    assert p.default == 3 and p.type is int and p.problem(4) is None
    assert "must be int" in p.problem(4.5) and "must be int" in p.problem(True)
    assert declare("lr", 0.1).problem(1) is None  # an int where a float is declared is a number
    assert "must be bool" in declare("flip", False).problem(0)


def test_bounds_and_choices_refuse_values():
    p = declare("holdout", {"default": 0.2, "range": "(0, 1)"})
    assert p.problem(0.5) is None
    assert "must lie in (0, 1), got 1" in p.problem(1)
    assert "must lie in" in p.problem(math.nan)
    c = declare("blend", {"default": "add", "choices": ["add", "average"]})
    assert "must be one of 'add', 'average', got 'mul'" in c.problem("mul")


@pytest.mark.parametrize("raw, words", [
    ({"default": 2.0, "range": "[0, 1]"}, "refuses the default"),
    ({"default": "x", "choices": ["a", "b"]}, "refuses the default"),
    ({"default": "x", "range": "[0, 1]"}, "range applies to numbers"),
    ({"range": "[0, 1]"}, "needs a `default`"),
    ({"default": 1, "max": 2}, "unknown field(s) max"),
    ({"default": None}, "default must be"),
])
def test_a_bad_declaration_is_refused(raw, words):
    with pytest.raises(Invalid, match=None) as e:
        declare("x", raw)
    assert words in str(e.value)


def test_resolve_merges_and_names_the_plugin():
    declared = {"n": declare("n", {"default": 100, "range": "[1, inf)"}), "blend": declare("blend", "add")}
    assert resolve(declared, {"n": 5}, "defense 'strip'") == {"n": 5, "blend": "add"}
    with pytest.raises(ValueError, match="defense 'strip' parameter 'n' must lie in"):
        resolve(declared, {"n": 0}, "defense 'strip'")
    with pytest.raises(ValueError, match="has no parameter 'm'; declared: n, blend"):
        resolve(declared, {"m": 0}, "defense 'strip'")


def test_the_harness_refuses_an_out_of_range_override(registry):
    with pytest.raises(BenchError, match=r"scenario.yaml: defense 'fine-pruning' parameter 'holdout' must lie in "
                                         r"\(0, 1\), got 1.5 \(declared in .*fine-pruning/submission.yaml\)"):
        registry.create("defense", "fine-pruning", {"holdout": 1.5}, where="scenario.yaml")


def test_a_manifest_with_a_bad_declaration_names_file_and_key(tmp_path):
    write_submission(tmp_path, "defense", "bad", "from benchmark.api import Defense\nclass Plugin(Defense): pass\n",
                     params={"eps": {"default": 0.1, "range": "(0, 0.05]"}})
    with pytest.raises(ConfigError) as e:
        Registry([tmp_path], entry_points=False)
    assert e.value.key == "parameters.eps" and "bad/submission.yaml" in str(e.value)


def test_shipped_plugins_declare_the_bounds_they_used_to_check_by_hand(registry):
    """Each value a plugin refused in its own __init__ before declarations existed is refused by the harness."""
    refused = {("attack", "badnets"): {"size": 0, "margin": -1, "mode": "one-to-one"},
               ("attack", "blended"): {"alpha": 0.0, "key": "photo"},
               ("attack", "invisible"): {"eps": 256.0, "perturbation": "dynamic"},
               ("attack", "sig"): {"amplitude": 0.0, "target_share": 1.5},
               ("attack", "wanet"): {"k": 1, "s": 0.0},
               ("defense", "activation-clustering"): {"size_threshold": 0.5, "reducer": "tsne"},
               ("defense", "anp"): {"alpha": 1.5, "threshold": -0.1},
               ("defense", "neural-cleanse"): {"steps": 0, "success": 0.0},
               ("defense", "spectral-signatures"): {"eps": 1.0},
               ("defense", "strip"): {"n": 0, "blend": "mul"},
               ("defense", "linf-pruning"): {"ratio": 1.5, "statistic": "l3"}}
    for (kind, name), values in refused.items():
        for k, v in values.items():
            with pytest.raises(BenchError, match=f"parameter '{k}'"):
                registry.create(kind, name, {k: v})


def test_submissions_import_only_the_api():
    """The contract is one module: a shipped submission imports nothing else from the harness."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "submissions"
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmark"):
                assert node.module == "benchmark.api", f"{f}: imports from {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("benchmark") for a in node.names), f"{f}: imports benchmark"


def test_a_range_whose_ends_are_not_numbers_names_its_key():
    with pytest.raises(Invalid) as e:
        declare("x", {"default": 0.5, "range": "[., 1]"})
    assert e.value.key == "x.range" and "must be numbers or inf" in e.value.message
