"""A Hub-compatible server on loopback (olah in offline mode, serving local git repositories), for tests."""
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

GIT_ENV = {"GIT_AUTHOR_NAME": "bdbench", "GIT_AUTHOR_EMAIL": "ci@bdbench.invalid", "GIT_COMMITTER_NAME": "bdbench",
           "GIT_COMMITTER_EMAIL": "ci@bdbench.invalid", "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commit_repo(folder: Path, message: str = "publish") -> str:
    """Commit everything in `folder` to branch main (a deterministic commit: fixed author and dates);
    returns the commit sha."""
    folder = Path(folder)
    env = {**os.environ, **GIT_ENV}
    if not (folder / ".git").exists():
        subprocess.run(["git", "init", "-q", "-b", "main", str(folder)], check=True, env=env)
    subprocess.run(["git", "-C", str(folder), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(folder), "commit", "-q", "--allow-empty", "-m", message], check=True, env=env)
    return subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], check=True, env=env,
                          capture_output=True, text=True).stdout.strip()


def add_repo(mirror: Path, kind: str, repo_id: str, files: dict) -> str:
    """Create (or update) repository `repo_id` of `kind` ('models' or 'datasets') with `files`
    {path in repo: bytes or a source Path}; returns the new commit sha."""
    folder = Path(mirror) / kind / repo_id
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        dest = folder / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, (bytes, bytearray)):
            dest.write_bytes(content)
        else:
            shutil.copyfile(content, dest)
    return commit_repo(folder)


@contextmanager
def serve(mirror: Path, workdir: Path, timeout: float = 60):
    """Run olah on a free loopback port serving the git repositories under `mirror`; yields its URL."""
    port = free_port()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.toml").write_text(f"""[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{workdir / 'repos'}"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
mirrors-path = ["{Path(mirror).resolve()}"]

[accessibility]
offline = true
""")
    olah = shutil.which("olah-cli")
    if olah is None:
        raise RuntimeError("olah-cli not found: pip install olah (it is in the test extra)")
    log = open(workdir / "olah.log", "wb")
    proc = subprocess.Popen([olah, "-c", str(workdir / "config.toml")], cwd=workdir, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"olah did not start: {(workdir / 'olah.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
