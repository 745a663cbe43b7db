"""A real Hugging Face hub server on localhost for the networked tests: olah (PyPI, MIT) in
offline mode, serving local git repositories as hub repos (``<mirrors>/models/ORG/NAME``,
``<mirrors>/datasets/ORG/NAME``). ``bash ci/test.sh`` installs it in ``.venv-olah``.

olah ignores HTTP Range on mirrored files, so it cannot serve a streamed Parquet footer; the
product downloads whole data files, which olah serves as any hub does.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OLAH = Path(os.environ.get("CTXN_OLAH", REPO / ".venv-olah" / "bin" / "olah-cli"))
GIT = ["git", "-c", "user.email=tests@ctxneurons", "-c", "user.name=tests", "-c", "commit.gpgsign=false"]


def require_olah() -> Path:
    if not OLAH.is_file():
        pytest.skip(f"olah not found at {OLAH}: `bash ci/test.sh` installs it (.venv-olah), or set CTXN_OLAH")
    return OLAH


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_commit(repo: Path, message: str = "add files") -> str:
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True, capture_output=True)
    subprocess.run([*GIT, "commit", "-q", "-m", message], cwd=repo, check=True, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def new_repo(mirrors: Path, kind: str, name: str) -> Path:
    repo = mirrors / kind / name
    repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    return repo


def add_model(mirrors: Path, name: str, model_dir: Path) -> str:
    """Serve a Hugging Face model directory as models/NAME; returns the commit sha."""
    repo = new_repo(mirrors, "models", name)
    for f in model_dir.iterdir():
        shutil.copy2(f, repo / f.name)
    return git_commit(repo)


def _parquet(path: Path, texts: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts, "meta": list(range(len(texts)))}), path)


def add_script_only_dataset(mirrors: Path, name: str) -> str:
    """A loading script at main and no Parquet conversion: nothing datasets 5 can read."""
    repo = new_repo(mirrors, "datasets", name)
    (repo / f"{name.split('/')[1]}.py").write_text("import datasets  # a loading script\n")
    return git_commit(repo, "loading script")


def add_script_dataset_with_conversion(mirrors: Path, name: str, texts: list[str], config: str, shards: int) -> dict:
    """The layout datasets 5 refuses at main (a loading script), with the hub's Parquet
    conversion on refs/convert/parquet as ``<config>/partial-train/NNNN.parquet``."""
    repo = new_repo(mirrors, "datasets", name)
    (repo / f"{name.split('/')[1]}.py").write_text("import datasets  # a loading script\n")
    (repo / "README.md").write_text(f"# {name}\n")
    main = git_commit(repo, "loading script")
    subprocess.run(["git", "checkout", "-q", "--orphan", "convert"], cwd=repo, check=True)
    subprocess.run(["git", "rm", "-q", "-rf", "."], cwd=repo, check=True)
    per = -(-len(texts) // shards)
    for k in range(shards):
        _parquet(repo / config / "partial-train" / f"{k:04d}.parquet", texts[k * per:(k + 1) * per])
    converted = git_commit(repo, "parquet conversion")
    subprocess.run(["git", "update-ref", "refs/convert/parquet", converted], cwd=repo, check=True)
    subprocess.run(["git", "checkout", "-q", "main"], cwd=repo, check=True)
    subprocess.run(["git", "branch", "-q", "-D", "convert"], cwd=repo, check=True)
    return {"main": main, "converted": converted}


def add_jsonl_dataset(mirrors: Path, name: str, splits: dict[str, list[str]], config: str) -> str:
    """Data files at main (JSON Lines), mapped to config and splits by the README's ``configs:``."""
    repo = new_repo(mirrors, "datasets", name)
    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, texts in splits.items():
        (repo / config).mkdir(exist_ok=True)
        with open(repo / config / f"{split}-00000-of-00001.jsonl", "w") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
        lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    (repo / "README.md").write_text("\n".join(lines + ["---", f"# {name}", ""]))
    return git_commit(repo)


@contextmanager
def olah_server(mirrors: Path, workdir: Path):
    """olah serving ``mirrors`` on a free port; yields its endpoint URL."""
    port = free_port()
    config = workdir / "olah.toml"
    config.write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nrepos-path = "{workdir / "repos"}"\n'
        f'mirrors-path = ["{mirrors}"]\n[accessibility]\noffline = true\n'
    )
    log = open(workdir / "olah.log", "w")
    proc = subprocess.Popen([str(require_olah()), "-c", str(config)], cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"olah did not start: {(workdir / 'olah.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def hub_env(endpoint: str, hf_home: Path, **extra) -> dict:
    """The environment of a user whose hub is ``endpoint`` and whose cache is ``hf_home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    return {**env, "HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_DISABLE_TELEMETRY": "1", **extra}


def run_python(code: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter: huggingface_hub reads its endpoint at import."""
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@contextmanager
def forward_proxy():
    """A plain HTTP forward proxy on localhost that counts what passes through it; yields
    (url, list of requested URLs). Enough for http:// endpoints (no CONNECT)."""
    import http.client
    import http.server
    import threading
    from urllib.parse import urlsplit

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _forward(self):
            seen.append(self.path)
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
            conn.request(self.command, url.path + (f"?{url.query}" if url.query else ""), body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            drop = ("transfer-encoding", "connection") + (() if self.command == "HEAD" else ("content-length",))
            for k, v in resp.getheaders():
                if k.lower() not in drop:
                    self.send_header(k, v)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_POST = _forward

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
