"""Submitted defenses run in their own process: a crash, a hang or a memory blow-up is a failed cell."""
import dataclasses
import json
from pathlib import Path

import pytest

from benchmark.registry import Registry
from benchmark.scenario import Defender, PluginSpec

from .conftest import REPO, Run, has_sandbox, sandbox_or_skip, write_submission

# A defense that tries every way it can think of to reach the attack, its target, triggered data, the store or
# the results: through what it is given, what lives in its process, its environment and open files, every process
# it can see in /proc, the sockets and network interfaces it can see, and every file it can reach from /. It looks
# for `forbidden` strings (hex-encoded in its parameters: the store's and the results' paths, and a canary the test
# writes into both and into the run's environment) and reports where it found them.
CHEAT = """
import gc, json, os, stat, struct, sys, time
from pathlib import Path
from benchmark import Defense, DefenseOutput
SECRET_NAMES = {"attack", "planted", "target", "eval_images", "eval_labels", "before", "a", "runner", "self_runner"}
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", sys.prefix, sys.base_prefix)


def read(path, n=1 << 16):
    try:
        with open(path, "rb") as f:
            return f.read(n).decode("latin-1")
    except OSError:
        return ""


class Plugin(Defense):
    def run(self, model, clean, ctx):
        found = set()
        forbidden = [bytes.fromhex(h).decode() for h in self.params["forbidden"]]  # hex: not in its own inputs

        def look(where, text):
            if any(f in text for f in forbidden):
                found.add(where)

        f = sys._getframe(1)
        while f is not None:  # the call stack: whoever called run() and their locals
            for k, v in f.f_locals.items():
                if k in SECRET_NAMES and v is not None and f.f_code.co_name != "run":
                    found.add(f"stack local {k} in {f.f_code.co_name}")
                look(f"stack local {k} in {f.f_code.co_name}", repr(v)[:100000])
            f = f.f_back
        for o in gc.get_objects():  # anything alive in the process
            t = type(o).__name__
            if (t in ("Runner", "Store", "Artifact", "Poisoning") and type(o).__module__.startswith("benchmark")) or (
                    t != "Plugin" and any(b.__name__ == "Attack" for b in type(o).__mro__[1:])):
                found.add(f"live object {t}")
        for k, v in os.environ.items():
            look(f"environment {k}", k + "=" + v)
        for p in os.listdir("/proc"):  # every process it can see: its environment, command line, files
            if not p.isdigit():
                continue
            for item in ("environ", "cmdline", "maps", "mountinfo"):
                look(f"/proc/{'self' if int(p) == os.getpid() else 'N'}/{item}", read(f"/proc/{p}/{item}", 1 << 20))
            for link in ("cwd", "root", "exe"):
                try:
                    look(f"/proc/N/{link}", os.readlink(f"/proc/{p}/{link}"))
                except OSError:
                    pass
            try:
                for fd in os.listdir(f"/proc/{p}/fd"):
                    target = os.readlink(f"/proc/{p}/fd/{fd}")
                    look("an open file of a process", target)
                    if target.startswith("/") and os.path.isfile(f"/proc/{p}/fd/{fd}"):  # reopen it
                        look("the content of an open file", read(f"/proc/{p}/fd/{fd}", 1 << 20))
            except OSError:
                pass
        look("unix sockets", read("/proc/net/unix", 1 << 20))
        for line in read("/proc/net/dev").splitlines()[2:]:
            if line.split(":")[0].strip() not in ("lo", ""):
                found.add("a network interface besides loopback")
        if Path("eval.safetensors").exists():
            found.add("evaluation inputs before run() returned")
        import socket
        try:  # a server the run keeps on loopback
            socket.create_connection(("127.0.0.1", self.params["port"]), timeout=2).close()
            found.add("a server of the run's on loopback")
        except OSError:
            pass
        start, files = time.monotonic(), 0
        stack = ["/"]  # the filesystem, walked without recursion (any depth): every name, small files' content
        while stack:
            root = stack.pop()
            try:
                entries = list(os.scandir(root))
            except OSError:
                continue
            system = any(root == s or root.startswith(s.rstrip("/") + "/") for s in SYSTEM)
            for e in entries:
                look(f"a path under {root}", e.path)
                try:
                    if e.is_dir(follow_symlinks=False):
                        if e.path not in ("/proc", "/sys", "/dev"):
                            stack.append(e.path)
                    elif not system and e.is_file(follow_symlinks=False) and files < 50000 \
                            and e.stat(follow_symlinks=False).st_size < (1 << 16):
                        files += 1
                        look(f"a file under {root}", read(e.path))
                        if e.name.startswith("eval") and e.name.endswith(".safetensors"):
                            found.add("evaluation inputs on disk")
                except OSError:
                    pass
        if len(clean) > self.params["max_clean"] or set(clean.labels.tolist()) - set(range(clean.num_classes)):
            found.add("more than the clean budget")
        for name, buf in list(model.named_buffers()) + list(model.named_parameters()):
            if name.split(".")[-1] not in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked",
                                          "mean", "std", "feature_mask"):
                found.add(f"model carries {name}")
            if name.endswith("num_batches_tracked") and int(buf) != 0:
                found.add("model carries its training history (num_batches_tracked)")
        if Path("model.safetensors").exists():  # the file's own header
            raw = open("model.safetensors", "rb").read()
            header = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
            if header.get("__metadata__", {}) not in ({}, {"format": "pt"}):
                found.add(f"model file metadata {header['__metadata__']}")
        return DefenseOutput(input_scorer=lambda x: x.mean((1, 2, 3)), model_score=float(len(found)),
                             info={"found": sorted(found), "walk_s": round(time.monotonic() - start, 1)})
"""

def defense(body: str, imports: str = "") -> str:
    """A defense module whose run() is `body` (one line per statement)."""
    lines = "\n".join("        " + line for line in body.strip().splitlines())
    return (f"{imports}\nfrom benchmark import Defense, DefenseOutput\nclass Plugin(Defense):\n"
            f"    def run(self, model, clean, ctx):\n{lines}\n")


HANG = defense("time.sleep(600)", "import time")
HOG = defense("hog = torch.ones(3 * 2 ** 30, dtype=torch.float64)  # 24 GiB", "import torch")

# Defenses that break the contract or attack the harness: each must end as a failed cell with a clear error, or a
# flagged result, and cost no other cell.
NONFINITE = defense("""
def scorer(x):
    s = x[:, :, -3:, -3:].mean((1, 2, 3))
    return torch.where(x.mean((1, 2, 3)) > 0.3, torch.full_like(s, float("nan")), s)
return DefenseOutput(model_score=float("inf"), input_scorer=scorer, info={"index": float("inf")})""", "import torch")
NOT_OUTPUT = defense('return {"model_score": 1.0}')
WRONG_MODEL = defense("return DefenseOutput(model=torch.nn.Linear(2, 2))", "import torch")
SHORT_SCORES = defense("return DefenseOutput(input_scorer=lambda x: x.mean().reshape(1))")
EXIT0 = defense("os._exit(0)", "import os")
# tries to change the harness, its own submission and the system, and leaves a process behind
VANDAL = """
import os, subprocess
from pathlib import Path
import benchmark
from benchmark import Defense, DefenseOutput
class Plugin(Defense):
    def run(self, model, clean, ctx):
        subprocess.Popen(["sleep", "987654"], start_new_session=True)
        wrote = []
        for target in (Path(benchmark.__file__).parent / "pwned.py", Path(__file__).parent / "pwned.py",
                       Path(benchmark.__file__), Path("/etc/pwned"), Path("/usr/pwned"), Path("/pwned")):
            try:
                with open(target, "a") as f:
                    f.write("# pwned")
                wrote.append(str(target))
            except OSError:
                pass
        return DefenseOutput(model_score=float(len(wrote)), info={"wrote": wrote})
"""


def _sleepers() -> list[int]:
    import os
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read() == b"sleep\x00987654\x00":
                out.append(int(pid))
        except OSError:
            pass
    return out


@pytest.fixture(scope="module")
def isolated(digits_env, tmp_path_factory):
    home, registry, sc, first, _ = digits_env
    subs = tmp_path_factory.mktemp("subs")
    write_submission(subs, "defense", "hang", HANG)
    write_submission(subs, "defense", "hog", HOG)
    hostile = {"nonfinite": NONFINITE, "not-output": NOT_OUTPUT, "wrong-model": WRONG_MODEL,
               "short-scores": SHORT_SCORES, "exit0": EXIT0}
    if has_sandbox():  # outside a sandbox the vandal would write into this checkout
        hostile["vandal"] = VANDAL
    for name, code in hostile.items():
        write_submission(subs, "defense", name, code)
    reg = Registry(registry.roots + [subs], entry_points=False)
    # a limit a loaded machine keeps (each sandboxed defense starts a fresh interpreter: seconds), and a short one
    # for the hang alone; no control cells
    limits = {t: dataclasses.replace(sc, defender=Defender(budget=sc.defender.budget, time_limit_s=t, memory_gb=4),
                                     clean_seeds=[]) for t in (120, 15)}
    store_home = tmp_path_factory.mktemp("iso")
    import shutil
    shutil.copytree(home / "store", store_home / "store", ignore=shutil.ignore_patterns("defense"))
    mode = "sandbox" if has_sandbox() else "process"  # a plain process where no sandbox starts (tests say which)
    run = Run(store_home, reg, limits[120], ["finetune", "crash", "hog", "corner", *hostile], isolate=mode)
    run.cells += Run(store_home, reg, limits[15], ["hang"], isolate=mode).cells
    return first, run


def test_isolated_defense_gives_the_same_result(isolated):
    first, run = isolated
    assert run.cell("finetune")["status"] == "ok", run.cell("finetune").get("error")
    assert run.cell("finetune")["metrics"]["defense"] == first.cell("finetune")["metrics"]["defense"]
    assert run.cell("corner")["metrics"]["defense"]["input_auroc"] == 1.0  # the scorer ran in the child


def test_nonfinite_scores_count_one_half_and_are_flagged(isolated):
    _, run = isolated
    c = run.cell("nonfinite")
    assert c["status"] == "ok", c.get("error")
    m = c["metrics"]["defense"]
    assert m["model_score"] is None and m["nonfinite"]["model_score"] == "inf"
    assert m["nonfinite"]["input_scores"] > 0 and 0 <= m["input_auroc"] <= 1
    assert c["info"] == {"index": "inf"}  # JSON has no inf: written as a string, not a failed cell


def test_contract_breakers_and_vandals_are_failed_cells_or_harmless(isolated):
    from benchmark import plugins
    _, run = isolated
    errors = {d: run.cell(d).get("error", {}).get("message", "") for d in
              ("not-output", "wrong-model", "short-scores", "exit0")}
    assert "returned dict, not a DefenseOutput" in errors["not-output"], errors
    assert "returned a model of type Linear" in errors["wrong-model"], errors
    assert "scores for" in errors["short-scores"] and "one per input" in errors["short-scores"], errors
    assert "died with exit code 0" in errors["exit0"], errors
    sandbox_or_skip()
    vandal = run.cell("vandal")
    assert vandal["status"] == "ok" and vandal["info"]["wrote"] == [], vandal["info"]
    assert not (REPO / "benchmark" / "pwned.py").exists() and "pwned" not in open(plugins.__file__).read()
    assert _sleepers() == []  # what it left running ended with its sandbox
    assert all(run.cell(d)["status"] == "ok" for d in ("finetune", "corner"))  # no other cell lost


def test_crash_hang_and_memory_blow_up_are_failed_cells(isolated):
    _, run = isolated
    crash, hang, hog = run.cell("crash"), run.cell("hang"), run.cell("hog")
    assert crash["status"] == "failed" and "RuntimeError: deliberate crash" in crash["error"]["message"]
    assert hang["status"] == "failed" and "wall-time limit of 15 s" in hang["error"]["message"]
    assert hog["status"] == "failed" and "memory limit 4 GiB" in hog["error"]["message"]
    # finetune, corner, nonfinite and (in a sandbox) vandal; failures store nothing
    assert run.computed.count("defense") == 3 + has_sandbox()


def test_a_cheating_defense_finds_nothing_in_the_sandbox(digits_env, tmp_path_factory, monkeypatch):
    """The threat model is enforced, not promised: in the sandbox (the default of `bdbench run` and `grid`) the cheat
    finds no attack, target, triggered input, store path, result or canary, anywhere it can look; in a plain process
    it finds the store through the filesystem and /proc, and in-process through the call stack (the probe works)."""
    sandbox_or_skip()
    home, registry, sc, *_ = digits_env
    subs = tmp_path_factory.mktemp("cheat")
    store_home = tmp_path_factory.mktemp("cheat-home")
    import shutil
    import uuid
    shutil.copytree(home / "store", store_home / "store", ignore=shutil.ignore_patterns("defense"))
    canary = f"canary-{uuid.uuid4().hex}"
    # as a real run has them: the store in the environment (its processes' /proc/N/environ)
    monkeypatch.setenv("BDBENCH_HOME", str(store_home / "store"))
    monkeypatch.setenv("BDBENCH_CANARY", canary)
    for folder in (store_home / "store", store_home / "results"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "canary.txt").write_text(canary)
    forbidden = [s.encode().hex() for s in (str(store_home), canary)]
    write_submission(subs, "defense", "cheat", CHEAT, params={"forbidden": forbidden, "max_clean": 10 ** 6, "port": 0})
    reg = Registry(registry.roots + [subs], entry_points=False)
    quick = dataclasses.replace(sc, clean_seeds=[])
    found = {}
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    with server, open(store_home / "store" / "canary.txt") as held:  # an open file of the run's, named in /proc
        for i, mode in enumerate(("sandbox", "process", "none")):
            spec = PluginSpec("cheat", label=f"cheat-{mode}", params={"max_clean": 10 ** 6 + i, "port": port})
            run = Run(store_home, reg, quick, [spec], isolate=mode)
            c = run.cell(f"cheat-{mode}")
            assert c["status"] == "ok", c.get("error")
            assert c["provenance"]["isolation"] == mode
            found[mode] = c["info"]["found"]
            if mode == "sandbox":
                assert c["metrics"]["defense"]["input_auroc"] is not None  # it still scored its inputs afterwards
                assert 0 < c["metrics"]["defense"]["clean_budget"] <= 35  # 5% of the digits victim's training set
        assert held.read() == canary
    assert found["sandbox"] == [], found["sandbox"]
    assert any(f.startswith("a path under") for f in found["process"]), found["process"]
    assert any(f.startswith("/proc/") or "open file" in f for f in found["process"]), found["process"]
    assert "a network interface besides loopback" in found["process"] or not _has_network(), found["process"]
    assert "a server of the run's on loopback" in found["process"], found["process"]
    print("what the cheat found:", json.dumps(found, indent=1))
    assert any("stack local" in f for f in found["none"]) and any("live object" in f for f in found["none"])


def _has_network() -> bool:
    import os
    return any(line.split(":")[0].strip() not in ("lo", "") for line in open("/proc/net/dev").read().splitlines()[2:]) \
        if os.path.exists("/proc/net/dev") else False


@pytest.mark.parametrize("mode", ["sandbox", "process"])
def test_a_defense_process_exits_when_its_parent_is_killed(tmp_path, mode):
    """kill -9 of the run (e.g. a grid) must not leave a defense running unowned."""
    if mode == "sandbox":
        sandbox_or_skip()
    import os
    import signal
    import subprocess
    import sys
    import time
    subs = tmp_path / "subs"
    write_submission(subs, "defense", "hang", HANG)
    script = f"""
import torch
from pathlib import Path
from benchmark.isolation import run_defense
from benchmark.models import Classifier, save
from tests.conftest import random_images
m = Classifier("test_resnet", 4, 3); save(m, Path({str(tmp_path)!r}) / "m.safetensors")
run_defense(roots=[Path({str(subs)!r})], name="hang", params={{}}, model_path=Path({str(tmp_path)!r}) / "m.safetensors",
            config=m.config, data=random_images(n=8), eval_images=None, device=torch.device("cpu"), seed=0,
            time_limit=600, memory_gb=0, mode={mode!r})
"""
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)

    def ppid(pid):
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])

    def descendants():  # this run's processes (other runs on the machine are not ours): the fork server, the defense
        out = []
        for pid in os.listdir("/proc"):
            try:
                p = int(pid) if pid.isdigit() else 0
                while p > 1 and p != parent.pid:
                    p = ppid(p)
                if p == parent.pid and int(pid) != parent.pid:
                    out.append(int(pid))
            except (OSError, ValueError, IndexError):
                pass
        return out

    def children():  # the defense process itself: it works in its own folder
        out = []
        for pid in descendants():
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
                if "bdbench-defense-" in cwd or cwd == "/defense":
                    out.append(pid)
            except OSError:
                pass
        return out
    deadline = time.time() + 120
    while not children() and time.time() < deadline:
        time.sleep(0.2)
    assert children(), "the defense process never started"
    kids = descendants()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while any(os.path.exists(f"/proc/{k}") and open(f"/proc/{k}/stat").read().split()[2] != "Z" for k in kids) \
            and time.time() < deadline:
        time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{k}") and open(f"/proc/{k}/stat").read().split()[2] != "Z" for k in kids)


def test_a_defense_from_an_installed_package_runs_in_the_sandbox(tmp_path, monkeypatch):
    """A defense registered through an entry point (an installed distribution) is found inside the sandbox too:
    the import path that holds its package is shown read-only, and nothing else of the submissions."""
    import sys

    import torch
    import yaml

    from benchmark.isolation import run_defense
    from benchmark.models import Classifier, save

    from .conftest import random_images
    sandbox_or_skip()
    site = tmp_path / "site"
    pkg = site / "bdbench_extra_defense"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "noop.py").write_text(defense("return DefenseOutput(model_score=7.0)"))
    (pkg / "submission.yaml").write_text(yaml.safe_dump({
        "name": "ep-noop", "kind": "defense", "entry": "bdbench_extra_defense.noop:Plugin", "paper": "p",
        "authors": ["a"], "licence": "MIT", "parameters": {}}))
    dist = site / "bdbench_extra_defense-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bdbench-extra-defense\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bdbench.plugins]\nep-noop = bdbench_extra_defense.noop:Plugin\n")
    monkeypatch.syspath_prepend(str(site))
    m = Classifier("test_resnet", 4, 3)
    save(m, tmp_path / "m.safetensors")
    try:
        out = run_defense(roots=[], name="ep-noop", params={}, model_path=tmp_path / "m.safetensors", config=m.config,
                          data=random_images(n=8), eval_images=None, device=torch.device("cpu"), seed=0,
                          time_limit=300, memory_gb=0, mode="sandbox")
    finally:
        for k in [k for k in sys.modules if k.startswith("bdbench_extra_defense")]:
            del sys.modules[k]
    assert out["model_score"] == 7.0


# Attacks on the harness through the defense's own folder, which the parent reads and writes after the child ran
# (found by a red-team review of the sandbox): each must fail cleanly, probe nothing and leave nothing behind.
PROBE_BY_LINK = """
import os, time, torch
probe = bytes.fromhex(self.params["probe"]).decode()   # a host path that exists
os.symlink(probe, "ready")                              # does the parent follow it, and hand over eval inputs?
time.sleep(1.5)
followed = os.path.exists("eval.safetensors")
os.unlink("ready")
shm = dev = "refused"
try:
    with open("/dev/shm/blob", "wb") as f:
        for _ in range(1100):                           # 1100 MiB: over its cap
            f.write(b"0" * (1 << 20))
    shm = "written"
except OSError:
    pass
try:
    open("/dev/blob", "wb").write(b"x")
    dev = "written"
except OSError:
    pass
os.makedirs("deep", exist_ok=True)
os.chdir("deep")
for _ in range(1500):                                   # deeper than shutil.rmtree can recurse
    os.mkdir("a")
    os.chdir("a")
open("left-behind", "w").write("x")
os.chdir("/defense")
return DefenseOutput(model_score=0.0, info={"followed": followed, "shm": shm, "dev": dev})
"""
EVAL_AS_DIR = """
import os, subprocess
subprocess.Popen(["sleep", "987654"], start_new_session=True)
os.mkdir("eval.safetensors")                            # the name the parent renames its inputs to
return DefenseOutput(input_scorer=lambda x: x.mean((1, 2, 3)))
"""
HUGE_OUTPUT = """
import json, os
json.dump({"has_model": False, "model_score": None, "info": {}, "scored": False}, open("result.json", "w"))
with open("samples.safetensors", "wb") as f:
    f.truncate(3 << 30)                                 # sparse: costs the defense nothing
os._exit(0)
"""


def test_the_folder_the_defense_controls_cannot_turn_the_harness_against_the_host(tmp_path):
    import tempfile

    import torch

    from benchmark.isolation import DefenseFailure, run_defense
    from benchmark.models import Classifier, save

    from .conftest import random_images
    sandbox_or_skip()
    secret = tmp_path / "store" / "meta.json"
    secret.parent.mkdir()
    secret.write_text("{}")
    for name, body in (("probe-by-link", PROBE_BY_LINK), ("eval-as-dir", EVAL_AS_DIR), ("huge-output", HUGE_OUTPUT)):
        write_submission(tmp_path / "subs", "defense", name, defense(body, "from benchmark import DefenseOutput"),
                         params={"probe": secret.as_posix().encode().hex()})
    m = Classifier("test_resnet", 4, 3)
    save(m, tmp_path / "m.safetensors")
    folders = lambda: set(Path(tempfile.gettempdir()).glob("bdbench-defense-*"))  # noqa: E731
    before = folders()

    def run(name):
        return run_defense(roots=[tmp_path / "subs"], name=name, params={"probe": secret.as_posix().encode().hex()},
                           model_path=tmp_path / "m.safetensors", config=m.config, data=random_images(n=8),
                           eval_images=torch.rand(6, 3, 32, 32), device=torch.device("cpu"), seed=0, time_limit=120,
                           memory_gb=4, mode="sandbox")
    info = run("probe-by-link")["info"]
    assert info == {"followed": False, "shm": "refused", "dev": "refused"}, info
    with pytest.raises(DefenseFailure, match="leave the name eval.safetensors free"):
        run("eval-as-dir")
    assert _sleepers() == []  # the failure ended the sandbox
    with pytest.raises(DefenseFailure, match="more than the"):
        run("huge-output")
    assert folders() == before  # every defense folder removed, the deep one too
