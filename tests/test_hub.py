"""Checkpoints and datasets through a real Hub-compatible server (olah on loopback) and the real clients."""
import hashlib
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from benchmark import hub, models
from benchmark.errors import BenchError, CheckpointError, ConfigError
from benchmark.zoo import Zoo

from .conftest import Run
from .hubserver import add_repo, serve
from .test_data import make_hf_folder


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return models.Classifier("test_resnet", 3, 3)


@pytest.fixture(scope="module")
def hubenv(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    mirror = root / "mirror"
    m1, m2 = root / "m1.safetensors", root / "m2.safetensors"
    models.save(tiny_model(0), m1)
    models.save(tiny_model(1), m2)
    rev1 = add_repo(mirror, "models", "bdbench/tiny", {"model.safetensors": m1})
    rev2 = add_repo(mirror, "models", "bdbench/tiny", {"model.safetensors": m2})  # main moves on
    pickled = root / "pickled.bin"
    torch.save(tiny_model(0).state_dict(), pickled)
    rev_p = add_repo(mirror, "models", "bdbench/pickled", {"model.safetensors": pickled})
    with serve(mirror, root / "olah") as url:
        mp = pytest.MonkeyPatch()
        mp.setenv("HF_ENDPOINT", url)
        mp.setenv("HF_HUB_CACHE", str(root / "hf-cache"))
        try:
            yield {"root": root, "mirror": mirror, "url": url, "rev1": rev1, "rev2": rev2, "rev_p": rev_p,
                   "sha1": sha(m1), "sha2": sha(m2), "sha_p": sha(pickled), "config": tiny_model().config}
        finally:
            mp.undo()


def zoo_file(path, **entries):
    checkpoints = []
    for name, e in entries.items():
        checkpoints.append({"name": name, "repo": e["repo"], "revision": e["revision"],
                            "model": {"filename": e.get("filename", "model.safetensors"), "sha256": e["sha256"]},
                            "config": e["config"], "scenario": {"name": "tiny", "version": 1},
                            "stage": "upstream", "seed": 0})
    path.write_text(yaml.safe_dump({"checkpoints": checkpoints}))
    return Zoo(path)


def entry(h, name="t", **over):
    e = {"repo": "bdbench/tiny", "revision": h["rev1"], "sha256": h["sha1"], "config": h["config"]}
    e.update(over)
    return zoo_file(h["root"] / f"zoo-{name}.yaml", **{name: e})[name]


def test_download_at_the_pinned_revision(hubenv):
    paths = hub.pull(entry(hubenv))
    assert sha(paths["model"]) == hubenv["sha1"] != hubenv["sha2"]  # not main's newer file
    assert str(hubenv["rev1"]) in str(paths["model"])  # the HF cache's snapshot of that commit
    m = models.load(paths["model"], hubenv["config"])
    x = torch.rand(2, 3, 32, 32)
    ref = tiny_model(0).eval()
    assert torch.allclose(m.eval()(x), ref(x))
    newer = hub.pull(entry(hubenv, "t2", revision=hubenv["rev2"], sha256=hubenv["sha2"]))
    assert sha(newer["model"]) == hubenv["sha2"]


def test_sha256_mismatch_is_refused(hubenv):
    with pytest.raises(CheckpointError, match="does not match the pinned"):
        hub.pull(entry(hubenv, sha256="0" * 64))


def test_tampered_cache_is_refused(hubenv):
    path = hub.pull(entry(hubenv, revision=hubenv["rev2"], sha256=hubenv["sha2"]))["model"]
    real = os.path.realpath(path)
    blob = bytearray(open(real, "rb").read())
    blob[100] ^= 0xFF
    os.chmod(real, 0o644)
    open(real, "wb").write(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        hub.pull(entry(hubenv, revision=hubenv["rev2"], sha256=hubenv["sha2"]))


@pytest.mark.parametrize("over,words", [
    ({"repo": "bdbench/no-such-repo"}, "repository (or revision )?not found"),
    ({"revision": "1" * 40}, "1111111111"),
])
def test_unknown_repo_and_revision_are_clear_errors(hubenv, over, words):
    t0 = time.monotonic()
    with pytest.raises(BenchError, match=words):
        hub.pull(entry(hubenv, **over))
    assert time.monotonic() - t0 < 60


def test_unknown_file_is_a_clear_error(hubenv):
    z = zoo_file(hubenv["root"] / "zoo-f.yaml", f={"repo": "bdbench/tiny", "revision": hubenv["rev1"],
                                                   "sha256": hubenv["sha1"], "config": hubenv["config"],
                                                   "filename": "weights.safetensors"})
    with pytest.raises(BenchError, match="file not found in the repository"):
        hub.pull(z["f"])


def test_pickles_are_refused(hubenv):
    with pytest.raises(ConfigError, match="only .safetensors"):
        zoo_file(hubenv["root"] / "zoo-p.yaml", p={"repo": "bdbench/pickled", "revision": hubenv["rev_p"],
                                                  "sha256": hubenv["sha_p"], "config": hubenv["config"],
                                                  "filename": "model.bin"})
    # a pickle published under a .safetensors name: its sha256 matches, but it is never unpickled
    path = hub.pull(entry(hubenv, repo="bdbench/pickled", revision=hubenv["rev_p"], sha256=hubenv["sha_p"]))["model"]
    with pytest.raises(CheckpointError, match="not a valid checkpoint"):
        models.load(path, hubenv["config"])


def test_server_down_is_a_clear_error_not_a_hang(hubenv, tmp_path):
    m = tmp_path / "m.safetensors"
    models.save(tiny_model(3), m)
    rev = add_repo(tmp_path / "mirror", "models", "bdbench/other", {"model.safetensors": m})
    with serve(tmp_path / "mirror", tmp_path / "olah") as url:
        os.environ["HF_ENDPOINT"] = url
        e = entry(hubenv, "o", repo="bdbench/other", revision=rev, sha256=sha(m))
        hub.pull(e)  # fine while it is up
    os.environ["HF_HUB_CACHE"] = str(tmp_path / "empty-cache")  # nothing cached: it must reach the server
    t0 = time.monotonic()
    try:
        with pytest.raises(BenchError, match="unreachable"):
            hub.pull(e)
    finally:
        os.environ["HF_ENDPOINT"], os.environ["HF_HUB_CACHE"] = hubenv["url"], str(hubenv["root"] / "hf-cache")
    assert time.monotonic() - t0 < 60


def test_offline_mode_uses_the_cache(hubenv):
    e = entry(hubenv)
    hub.pull(e)
    code = ("from benchmark import hub; from benchmark.zoo import Zoo; import sys; "
            "print(hub.pull(Zoo(sys.argv[1])['t'])['model'])")
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    r = subprocess.run([sys.executable, "-c", code, str(hubenv["root"] / "zoo-t.yaml")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sha(r.stdout.strip()) == hubenv["sha1"]


def test_dataset_repo_loads_through_datasets(hubenv, tmp_path):
    src = make_hf_folder(tmp_path / "src")
    rev = add_repo(hubenv["mirror"], "datasets", "bdbench/tiny-data",
                   {"data/train-00000-of-00001.parquet": src / "data/train-00000-of-00001.parquet",
                    "data/test-00000-of-00001.parquet": src / "data/test-00000-of-00001.parquet"})
    code = ("import sys; from pathlib import Path; from benchmark.data import load; "
            "from benchmark.scenario import DataSpec, ImageSpec; "
            "tr, te = load(DataSpec(source='hub', id='bdbench/tiny-data', revision=sys.argv[1], image_column='img'), "
            "ImageSpec(size=8), Path(sys.argv[2])); print(len(tr), len(te), tr.classes)")
    env = {**os.environ, "HF_ENDPOINT": hubenv["url"], "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-c", code, rev, str(tmp_path / "cache")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split("\n")[0] == "12 6 ['cat', 'dog', 'eel']"


def test_publish_then_run_from_the_zoo(hubenv, digits_env, tmp_path):
    """`bdbench publish` writes the folder; served as a Hub repo and listed in a zoo, a fresh run takes its
    upstream checkpoints from there and trains only the downstream stages."""
    home, registry, sc, first, _ = digits_env
    entries = []
    for stage, extra in (("upstream", []), ("backdoor", ["--attack", "badnets"])):
        out = tmp_path / stage
        r = subprocess.run([sys.executable, "-m", "benchmark", "publish", "digits", "--stage", stage, *extra,
                            "--repo", f"bdbench/digits-{stage}", "--out", str(out), "--workdir", str(home / "store"),
                            "--dry-run"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        files = sorted(p.name for p in out.iterdir())
        assert files == ["README.md", "config.json", "model.safetensors"]
        card = ModelCard.load(out / "README.md")
        if stage == "backdoor":
            assert {"backdoor", "attack:badnets"} <= set(card.data.tags)
            assert card.data.bdbench["target"] == 0 and card.data.bdbench["trigger"]["size"] == 3
            assert "intentionally backdoored" in card.text and card.data.license == "apache-2.0"
            assert card.data.bdbench["scores"]["upstream_asr"] >= 0.9
        printed = yaml.safe_load(r.stdout.split("zoo entry for benchmark/zoo.yaml:\n", 1)[1])["checkpoints"][0]
        assert printed["model"]["sha256"] == sha(out / "model.safetensors")
        printed["revision"] = add_repo(hubenv["mirror"], "models", f"bdbench/digits-{stage}",
                                       {n: out / n for n in files})
        entries.append(printed)
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump({"checkpoints": entries}))
    home2 = tmp_path / "fresh"
    home2.mkdir()
    run = Run(home2, registry, sc, [], zoo=Zoo(tmp_path / "zoo.yaml"))
    assert sorted(run.computed) == sorted(["upstream", "backdoor", "downstream", "downstream"] + ["eval"] * 4)
    from benchmark.stages import upstream
    cell = run.cell(None)
    assert cell["attack"]["info"]["zoo"]["revision"] == entries[1]["revision"]
    assert run.runner.store.get(
        "backdoor", {"zoo": upstream.zoo_spec(Zoo(tmp_path / "zoo.yaml")[entries[1]["name"]]),
                     "attack": run.runner.env.ident("attack", sc.attacks[0])}).meta["wall_time_s"] < 30
    # the published weights are exactly the ones built: same scores before and after transfer
    assert cell["metrics"] == first.cell(None)["metrics"]


def test_rate_limits_are_retried_with_backoff(monkeypatch):
    import httpx2
    from huggingface_hub import errors as hfe
    calls, sleeps = [], []
    monkeypatch.setattr(hub.time, "sleep", sleeps.append)

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            response = httpx2.Response(429, request=httpx2.Request("GET", "http://hub.invalid/x"))
            raise hfe.HfHubHTTPError("429 Too Many Requests", response=response)
        return "ok"
    assert hub.with_retries(flaky, "thing") == "ok"
    assert len(calls) == 3 and sleeps == [0.5, 1.0]  # exponential backoff

    def always_down():
        response = httpx2.Response(503, request=httpx2.Request("GET", "http://hub.invalid/x"))
        raise hfe.HfHubHTTPError("503", response=response)
    with pytest.raises(BenchError, match="HTTP 503 after 4 tries"):
        hub.with_retries(always_down, "thing")
