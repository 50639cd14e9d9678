"""The sandbox a submitted defense runs in: bubblewrap (Linux namespaces), one per defense process.

A defense is third-party code scored by pull request, so the harness assumes it will look for the answer. Inside
the sandbox it sees:

- its own folder, mounted at `/defense` and its working directory: the delivered model, the defender's data and
  its job (parameters, seed, device); the only place it can write, besides an empty `/tmp` of at most 2 GiB
  (the rest, `/` included, is read-only);
- read-only: the system (`/usr`, `/etc`, the `/lib*` links), the Python installation and its site-packages, the
  `benchmark` package, and its own submission folder (for a plugin package registered through an entry point,
  the import path that holds it);
- its own PID namespace (a fresh `/proc` that shows its own processes only), its own network namespace (loopback
  only), IPC, UTS and cgroup namespaces, a user namespace in which it is an unprivileged user with no capability;
- an environment with nothing of the caller's but the thread settings (and CUDA_VISIBLE_DEVICES on a GPU), also
  in the environment of bwrap's own process (the sandbox's PID 1), and no open file but a log in its folder.

It does not see the store, the results, the caller's files, environment, command line or processes, the other
submissions, or the network. bwrap's options reach it through a pipe (`--args`), so even its `/proc/1` holds no
path. Time and memory limits are kept by isolation.py as for any defense process, which also treats the folder as
hostile after the child ran (no link followed, sizes bounded, a disk quota, a removal that no depth defeats).

Known limits: the memory limit is an address-space cap per process, so memory a defense holds outside it (a
memfd) is bounded only by the machine; `/tmp` and `/dev/shm` are capped tmpfs. Threads are not capped. On a GPU,
all of `/sys` is shown read-only (the driver's libraries read it), which names the host's network interfaces.

Where bubblewrap or user namespaces are unavailable, `available()` says why; isolation.py then warns loudly and
runs the defense in a plain process, and a leaderboard run (`bdbench grid`) refuses unless told explicitly.
"""
from __future__ import annotations

import functools
import glob
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

INSIDE = "/defense"  # the defense's folder, as it sees it
TMP_BYTES = 2 << 30  # its /tmp lives in memory, outside the address-space cap: capped here
SHM_BYTES = 1 << 30  # likewise /dev/shm (torch's DataLoader workers share tensors through it)
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) "
                "on a Linux kernel that allows user namespaces")


def bwrap() -> Optional[str]:
    return shutil.which("bwrap")


def _covered(path: str, mounts: list[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def python_paths() -> list[str]:
    """What the interpreter needs, read-only: its prefixes and site-packages (a venv's and its base's)."""
    out: list[str] = []
    cands = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages()]
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        cands.append(site.getusersitepackages())
    for p in cands:
        p = os.path.realpath(p)
        if os.path.isdir(p) and not _covered(p, list(SYSTEM) + out):
            out.append(p)
    return out


def package_root() -> str:
    """The folder that holds the `benchmark` package (a source tree or site-packages)."""
    return str(Path(__file__).resolve().parent.parent)


def arguments(folder: Path, plugin_folder: Optional[Path], gpu: bool, threads: int,
              python_path: Sequence[str] = ()) -> list[str]:
    """bwrap's arguments for a defense working in `folder` (mounted at /defense); `python_path`: import paths to
    show it read-only (where an installed plugin package lives) besides the Python installation's."""
    a = ["--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL",
         "--die-with-parent", "--new-session", "--hostname", "defense"]
    for p in SYSTEM:
        if os.path.islink(p):
            a += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            a += ["--ro-bind", p, p]
    a += ["--proc", "/proc", "--dev", "/dev", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
          "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    # CPU topology for torch's thread pool and cpuinfo (no file of the caller's lies there)
    a += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    mounted = list(SYSTEM)
    pkg = str(Path(__file__).resolve().parent)
    extra = [str(Path(p).resolve()) for p in python_path]
    for p in [*python_paths(), pkg, *extra] + ([str(Path(plugin_folder).resolve())] if plugin_folder else []):
        if not _covered(p, mounted):
            a += ["--ro-bind", p, p]
            mounted.append(p)
    if gpu:
        for dev in sorted(glob.glob("/dev/nvidia*")) + ["/dev/dri"]:
            a += ["--dev-bind-try", dev, dev]
        a += ["--ro-bind-try", "/sys", "/sys"]
    a += ["--bind", str(folder), INSIDE, "--remount-ro", "/", "--chdir", INSIDE, "--clearenv"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": INSIDE, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "PYTHONPATH": os.pathsep.join([package_root(), *extra]),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    if gpu and "CUDA_VISIBLE_DEVICES" in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    for k, v in env.items():
        a += ["--setenv", k, v]
    return a


def popen(folder: Path, command: list[str], *, plugin_folder: Optional[Path] = None, gpu: bool = False,
          threads: int = 1, log: Optional[Path] = None, python_path: Sequence[str] = (),
          preexec: Optional[Callable[[], None]] = None) -> subprocess.Popen:
    """Start `command` in a sandbox over `folder`; its output goes to `log` (a file in the folder), never to the
    caller's stdout, whose file a process could reopen through /proc/self/fd."""
    exe = bwrap()
    if exe is None:
        raise OSError(f"bwrap not found: {INSTALL_HINT}")
    args = arguments(folder, plugin_folder, gpu, threads, python_path)  # the options; the command itself holds no path
    r, w = os.pipe()
    os.write(w, b"".join(s.encode() + b"\0" for s in args))  # well under a pipe's buffer
    os.close(w)
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    try:
        # bwrap's own environment is empty too: the sandbox's PID 1 is a bwrap process, whose /proc/1/environ
        # (the environment it was started with) a defense can read
        return subprocess.Popen([exe, "--args", str(r), "--", *command], pass_fds=(r,), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, close_fds=True, start_new_session=True, env={},
                                preexec_fn=preexec)
    finally:
        os.close(r)
        if log is not None:
            out.close()


@functools.lru_cache(maxsize=None)
def available() -> tuple[bool, str]:
    """(True, '') if a sandbox starts here and runs this Python inside it, else (False, why)."""
    if not sys.platform.startswith("linux"):
        return False, f"sandboxes need Linux namespaces; this is {sys.platform}"
    if bwrap() is None:
        return False, f"bwrap not found: {INSTALL_HINT}"
    import tempfile
    with tempfile.TemporaryDirectory(prefix="bdbench-sandbox-check-") as tmp:
        log = Path(tmp) / "log.txt"
        try:
            probe = "import benchmark, os; open('ok', 'w').write(str(os.getuid()))"
            p = popen(Path(tmp), [sys.executable, "-c", probe], log=log)
            p.wait(timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            return False, f"bwrap failed to start: {e}"
        if p.returncode != 0 or not (Path(tmp) / "ok").is_file():
            text = log.read_text(errors="replace").strip() if log.is_file() else ""
            return False, f"bwrap exited with {p.returncode}: {text[-500:] or 'no output'} ({INSTALL_HINT})"
    return True, ""
