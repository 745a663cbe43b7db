"""The networked path against a real hub server on localhost (olah, see tests/hubserver.py):
a GPT-2-shaped model served as openai-community/gpt2, OpenWebText in the layout datasets 5
refuses (a loading script at main) with the hub's Parquet conversion beside it, and a JSON
Lines dataset for ``hf:`` corpora. Each scenario runs in a fresh interpreter with the
environment a user would set (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import SHARED
from hubserver import free_port, hub_env, run_python

LOAD = """
import json
from ctxneurons.book.experiment import resolve_model_choice
from ctxneurons.io.model import load_layer0
from ctxneurons.io.corpus import select_token_batch
w = load_layer0("gpt2", device="cpu")
owt = select_token_batch("openwebtext", w.tokenizer, 4, 64, seed=3)
web = select_token_batch("hf:ctxn-test/webtext-jsonl:web:test", w.tokenizer, 3, 64, seed=1)
print(json.dumps({"edition": resolve_model_choice("auto"), "revision": w.revision, "paper_model": w.paper_model,
                  "owt": [owt.source, owt.revision, owt.tokens.tolist(), owt.doc_ids],
                  "web": [web.source, web.revision, web.texts]}))
"""


def _json(proc) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_model_and_corpora_through_a_mirror_then_from_the_cache_offline(hub, tmp_path):
    home = tmp_path / "hf-home"
    online = _json(run_python(LOAD, hub_env(hub["url"], home)))
    assert online["edition"] == ["gpt2", False]
    assert online["revision"] == hub["shas"]["model"] and online["paper_model"] is False
    source, revision, tokens, doc_ids = online["owt"]
    assert revision == hub["shas"]["owt"]["converted"] and "parquet-conversion" in source
    assert len(tokens) == 4 and all(len(row) == 64 and row[0] == 50256 for row in tokens)
    # The seed picks whole shards: 4 texts need one of the three, and only that one is fetched.
    shards = list(home.glob("hub/datasets--Skylion007--openwebtext/snapshots/*/plain_text/partial-train/*.parquet"))
    assert len(shards) == 1 and len({d // 1_000_000 for d in doc_ids}) == 1
    web_source, web_revision, web_texts = online["web"]
    assert web_revision == hub["shas"]["jsonl"] and "main" in web_source
    test_split = hub["webtext"][900:1000]
    assert all(any(t.strip()[:40] in doc for doc in test_split) for t in web_texts)

    # The hub gone (a dead endpoint) and offline mode on: everything comes from the cache, the same.
    dead = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    offline = _json(run_python(LOAD, hub_env(dead, home, HF_HUB_OFFLINE="1")))
    assert time.monotonic() - start < 60
    assert offline == online
    # ... and with the endpoint dead but offline mode not set: the cache answers with no probe at all.
    assert _json(run_python(LOAD, hub_env(dead, home))) == online


FAIL = """
import json, time
from ctxneurons.io.model import ModelLoadError, load_layer0
from ctxneurons.io.corpus import CorpusError, select_token_batch
from ctxneurons.book.experiment import resolve_model_choice
from conftest import gpt2_tokenizer
out = {}
for name, call in [("model", lambda: load_layer0(MODEL, device="cpu")),
                   ("corpus", lambda: select_token_batch(CORPUS, gpt2_tokenizer(), 2, 32)),
                   ("edition", lambda: resolve_model_choice("auto"))]:
    start = time.monotonic()
    try:
        out[name] = ["ok", repr(call())]
    except (ModelLoadError, CorpusError) as err:
        out[name] = [type(err).__name__, str(err)]
    out[name].append(time.monotonic() - start)
print(json.dumps(out))
"""


def _fail(env, model="gpt2", corpus="openwebtext") -> dict:
    code = "import sys; sys.path.insert(0, 'tests')\n" + FAIL.replace("MODEL", repr(model)).replace("CORPUS", repr(corpus))
    return _json(run_python(code, env))


def test_server_down_fails_within_seconds_and_says_what_to_do(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    out = _fail(hub_env(dead, tmp_path / "hf-home"))
    for name in ("model", "corpus"):
        kind, msg, seconds = out[name]
        assert kind in ("ModelLoadError", "CorpusError") and seconds < 15, out[name]
        assert dead in msg and "cannot be reached" in msg and "HF_ENDPOINT" in msg
    assert "model='toy'" in out["model"][1] and "corpus='/path/texts.jsonl'" in out["corpus"][1]
    assert out["edition"][0] == "ok" and "'toy', True" in out["edition"][1]


def test_offline_mode_with_an_empty_cache_says_so(tmp_path):
    out = _fail(hub_env("http://127.0.0.1:9", tmp_path / "hf-home", HF_HUB_OFFLINE="1"))
    assert "offline mode is set" in out["model"][1] and "offline mode is set" in out["corpus"][1]
    assert all(out[k][2] < 15 for k in out)


def test_wrong_endpoint_and_missing_repos_are_named(hub, tmp_path):
    from hubserver import REPO  # noqa: F401  (olah is running: the endpoint answers)

    out = _fail(hub_env(hub["url"], tmp_path / "hf-home"), model="nobody/no-such-model", corpus="hf:nobody/no-such-data")
    assert "nobody/no-such-model" in out["model"][1] and "no such repository" in out["model"][1]
    assert "nobody/no-such-data" in out["corpus"][1] and "no such repository" in out["corpus"][1]
    # Only a loading script, no Parquet conversion: the repo, the revisions tried, the way out.
    msg = _fail(hub_env(hub["url"], tmp_path / "hf-home"), corpus="hf:ctxn-test/script-only")["corpus"][1]
    assert "ctxn-test/script-only" in msg and f"main ({hub['shas']['script'][:12]})" in msg
    assert "refs/convert/parquet (absent)" in msg and "corpus='/path/texts.jsonl'" in msg
    # A server that is no hub (any web server at a wrong HF_ENDPOINT).
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wrong = f"http://127.0.0.1:{server.server_address[1]}"
        out = _fail(hub_env(wrong, tmp_path / "hf-home2"))
    finally:
        server.shutdown()
    for name in ("model", "corpus"):
        kind, msg, seconds = out[name]
        assert kind != "ok" and wrong in msg and seconds < 15, out[name]


def test_tests_fetch_their_data_from_the_hub_when_shared_data_is_absent(hub, tmp_path):
    code = (f"import sys; sys.path.insert(0, 'tests')\nfrom shared_data import fetch\n"
            f"fetch(__import__('pathlib').Path({str(tmp_path / 'data')!r}), n_texts=50)")
    proc = run_python(code, hub_env(hub["url"], tmp_path / "hf-home"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = tmp_path / "data"
    assert (data / "gpt2-tokenizer" / "vocab.json").read_bytes() == (SHARED / "gpt2-tokenizer" / "vocab.json").read_bytes()
    lines = (data / "webtext-sample.jsonl").read_text().splitlines()
    assert len(lines) == 50 and all(json.loads(line)["text"] in hub["owt"] for line in lines)


def test_a_proxy_is_used_as_the_hub_client_uses_it(hub, tmp_path):
    """On many GPU clusters a proxy is the only way out: HTTP(S)_PROXY carries every call."""
    from hubserver import forward_proxy

    code = "from ctxneurons.io.model import load_layer0; print(load_layer0('gpt2', device='cpu').revision)"
    with forward_proxy() as (proxy, seen):
        env = hub_env(hub["url"], tmp_path / "hf-home", HTTP_PROXY=proxy, HTTPS_PROXY=proxy, NO_PROXY="")
        env.pop("no_proxy", None)
        proc = run_python(code, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == hub["shas"]["model"]
    assert any("/api/models/openai-community/gpt2" in u for u in seen) and any("config.json" in u for u in seen)
    # A dead proxy: the error says the hub could not be reached and names the proxy.
    dead = f"http://127.0.0.1:{free_port()}"
    env = hub_env(hub["url"], tmp_path / "hf-home2", HTTP_PROXY=dead, HTTPS_PROXY=dead, NO_PROXY="")
    env.pop("no_proxy", None)
    proc = run_python(code, env)
    assert proc.returncode != 0 and "cannot be reached" in proc.stderr and dead in proc.stderr


def test_prefetch_fills_the_cache_for_an_offline_machine(hub, tmp_path):
    home = tmp_path / "hf-home"
    proc = subprocess.run([sys.executable, "-m", "ctxneurons.book.cli", "prefetch", "--n-texts", "5"], cwd=tmp_path,
                          env=hub_env(hub["url"], home), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert hub["shas"]["model"] in proc.stdout and hub["shas"]["owt"]["converted"][:12] in proc.stdout
    code = ("from ctxneurons.io.model import load_layer0; from ctxneurons.io.corpus import select_token_batch\n"
            "w = load_layer0('gpt2', device='cpu'); print(select_token_batch('openwebtext', w.tokenizer, 6, w.n_ctx).revision)")
    offline = run_python(code, hub_env(f"http://127.0.0.1:{free_port()}", home, HF_HUB_OFFLINE="1"))
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert offline.stdout.split()[-1] == hub["shas"]["owt"]["converted"]


@pytest.mark.slow
def test_gpu_job_builds_the_gpt2_edition_through_the_hub_then_reruns_from_the_cache(hub, gpt2_edition_book):
    """ci/gpu_job.sh as a GPU runner runs it (model gpt2, OpenWebText, both from the hub),
    on CPU with a handful of texts; then again with the hub gone, from the cache."""
    book, settings, home = gpt2_edition_book, gpt2_edition_book["settings"], gpt2_edition_book["home"]
    repo, tmp_path = book["repo"], book["root"]
    front = (book["html"] / "book" / "intro.html").read_text()
    model_sha, owt_sha = hub["shas"]["model"], hub["shas"]["owt"]["converted"]
    assert f"openai-community/gpt2@{model_sha[:12]}" in front and owt_sha[:12] in front
    assert "Offline edition" not in front
    summary = json.loads((book["outputs"] / "contextual_circuit" / "summary.json").read_text())
    assert summary["model_revision"] == model_sha and summary["corpus_revision"] == owt_sha
    assert summary["model_fallback_to_toy"] is False

    dead = f"http://127.0.0.1:{free_port()}"
    env = hub_env(dead, home, HF_HUB_OFFLINE="1", CTXN_RUNS_DIR=str(tmp_path / "runs-offline"), CTXN_SKIP_BOOK="1", **settings)
    proc = subprocess.run(["bash", "ci/gpu_job.sh"], cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    rerun = json.loads(next((tmp_path / "runs-offline").rglob("summary.json")).read_text())
    assert rerun["model_revision"] == model_sha and rerun["corpus_revision"] == owt_sha


def test_the_book_built_through_the_hub_is_built_once(gpt2_edition_book, request):
    """Under ``bash ci/test.sh`` (pytest-xdist, --dist loadgroup) every test that reads the book
    built through the hub runs on one worker, or each worker builds it again (two minutes
    each): a pytest that drops xdist's groups silently (pytest-xdist issue #1386) fails here."""
    from conftest import BOOK_GROUP

    if getattr(request.config.option, "loadgroup", False) or request.config.getvalue("dist") == "loadgroup":
        assert request.node.nodeid.endswith(f"@{BOOK_GROUP}"), request.node.nodeid
