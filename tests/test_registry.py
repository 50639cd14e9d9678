"""Submissions: manifests, discovery in folders and through entry points, and clear errors."""
import sys

import pytest
import yaml

from benchmark import Attack
from benchmark.errors import BenchError, ConfigError, UnknownPluginError
from benchmark.registry import Registry

from .conftest import write_submission

DEFENSE = """
from benchmark import Defense, DefenseOutput
class Plugin(Defense):
    def run(self, model, clean, ctx):
        return DefenseOutput(model_score=1.0)
"""


def manifest(**over):
    d = {"name": "x", "kind": "defense", "entry": "plugin:Plugin", "paper": "p", "authors": ["a"], "licence": "MIT",
         "parameters": {"k": 1}}
    d.update(over)
    return yaml.safe_dump(d)


def test_builtin_submissions_are_found(registry):
    assert "badnets" in registry.names("attack")
    assert {"finetune", "linf-pruning"} <= set(registry.names("defense"))
    m = registry.manifest("defense", "linf-pruning")
    assert m.paper.startswith("Cheng") and "threshold" in m.parameters


def test_unknown_name_lists_the_known(registry):
    with pytest.raises(UnknownPluginError, match="Known attacks: badnets"):
        registry.create("attack", "badnet")


@pytest.mark.parametrize("over,key", [
    ({"entry": "no_colon"}, "entry"),
    ({"authors": "just one string"}, "authors"),
    ({"kind": "detector"}, "kind"),
    ({"parameters": {"k": None}}, "parameters.k"),
    ({"paper": None}, "paper"),
])
def test_malformed_manifest_names_file_and_key(tmp_path, over, key):
    write_submission(tmp_path, "defense", "x", DEFENSE, manifest=manifest(**over))
    with pytest.raises(ConfigError) as e:
        Registry([tmp_path], entry_points=False)
    assert e.value.key == key and "submission.yaml" in e.value.file


def test_missing_manifest_key(tmp_path):
    d = yaml.safe_load(manifest())
    del d["licence"]
    write_submission(tmp_path, "defense", "x", DEFENSE, manifest=yaml.safe_dump(d))
    with pytest.raises(ConfigError, match="key 'licence': missing required key"):
        Registry([tmp_path], entry_points=False)


def test_kind_must_match_folder(tmp_path):
    write_submission(tmp_path, "attack", "x", DEFENSE, manifest=manifest())
    with pytest.raises(ConfigError, match="under attacks/"):
        Registry([tmp_path], entry_points=False)


def test_entry_module_and_class_are_checked(tmp_path):
    write_submission(tmp_path, "defense", "x", DEFENSE, manifest=manifest(entry="missing:Plugin"))
    reg = Registry([tmp_path], entry_points=False)
    with pytest.raises(ConfigError, match="missing.py not found"):
        reg.create("defense", "x")
    write_submission(tmp_path, "defense", "x", DEFENSE, manifest=manifest(entry="plugin:Nope"))
    with pytest.raises(ConfigError, match="defines no 'Nope'"):
        Registry([tmp_path], entry_points=False).create("defense", "x")
    write_submission(tmp_path, "defense", "x", "class Plugin: pass\n", manifest=manifest())
    with pytest.raises(BenchError, match="not a subclass of benchmark.Defense"):
        Registry([tmp_path], entry_points=False).create("defense", "x")
    write_submission(tmp_path, "defense", "x", "import no_such_module_here\n", manifest=manifest())
    with pytest.raises(BenchError, match="failed to import: ModuleNotFoundError"):
        Registry([tmp_path], entry_points=False).create("defense", "x")


def test_duplicate_names_across_roots(tmp_path):
    write_submission(tmp_path / "a", "defense", "x", DEFENSE, manifest=manifest())
    write_submission(tmp_path / "b", "defense", "x", DEFENSE, manifest=manifest())
    with pytest.raises(BenchError, match="two defenses are named 'x'"):
        Registry([tmp_path / "a", tmp_path / "b"], entry_points=False)


def test_folder_submission_is_created_with_defaults_and_overrides(tmp_path):
    write_submission(tmp_path, "defense", "x", DEFENSE, manifest=manifest())
    reg = Registry([tmp_path], entry_points=False)
    assert reg.create("defense", "x").params == {"k": 1}
    assert reg.create("defense", "x", {"k": 7}).params == {"k": 7}
    h = reg.code_hash("defense", "x")
    (tmp_path / "defenses" / "x" / "plugin.py").write_text(DEFENSE + "\n# changed\n")
    assert reg.code_hash("defense", "x") != h  # code changes invalidate cached artifacts


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    """A real installed distribution (a .dist-info on sys.path) registering group bdbench.plugins."""
    pkg = tmp_path / "site" / "bdbench_extra"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "trig.py").write_text("from benchmark import Attack\nclass Corner(Attack):\n"
                                 "    def apply(self, x):\n        x = x.clone(); x[..., -1, -1] = 1; return x\n")
    (pkg / "submission.yaml").write_text(yaml.safe_dump({
        "name": "corner-pixel", "kind": "attack", "entry": "bdbench_extra.trig:Corner", "paper": "p",
        "authors": ["a"], "licence": "MIT", "parameters": {"mode": "all-to-one"}}))
    dist = tmp_path / "site" / "bdbench_extra-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bdbench-extra\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bdbench.plugins]\ncorner-pixel = bdbench_extra.trig:Corner\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    reg = Registry([], entry_points=True)
    assert "corner-pixel" in reg.names("attack")
    a = reg.create("attack", "corner-pixel")
    assert isinstance(a, Attack) and a.manifest.name == "corner-pixel"
    import torch
    assert a.apply(torch.zeros(1, 1, 4, 4))[0, 0, 3, 3] == 1
    sys.modules.pop("bdbench_extra", None), sys.modules.pop("bdbench_extra.trig", None)
