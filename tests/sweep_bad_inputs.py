"""Run by hand (python tests/sweep_bad_inputs.py; pytest does not collect it): my own sweep of bad inputs and faults through the CLI, batch, merge, notebooks' parameters,
the cache, the corpus readers and the live export. Counts outcomes by class."""
import contextlib, io, json, os, sys, tempfile, shutil, subprocess, math
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_bad_inputs import CASES, NOTEBOOK_CASES, T
from tests.test_batch import write_demo_notebook
from ctxneurons.book import cli, batch
from ctxneurons.book.params import validate, ParameterError

counts = {"clear error": 0, "handled correctly": 0, "silent wrong": 0, "traceback": 0, "exit 0 on invalid": 0, "lost results": 0}
log = []
tmp = Path(tempfile.mkdtemp())
(tmp / "afile").write_text("x"); (tmp / "empty").mkdir(); (tmp / "dir.csv").mkdir(); (tmp / "readonly").mkdir()
nb = write_demo_notebook(tmp / "notebooks")
runs = tmp / "runs" / "01_demo" / "seed=1__deadbeef"; (runs / "outputs" / "demo").mkdir(parents=True)
(runs / "outputs/demo/summary.json").write_text('{"headline": {"twice": 2}}'); (runs / "run.json").write_text('{"notebook": "01_demo.ipynb", "parameters": {"seed": 1}}')
def snap(): return {p: p.read_bytes() for p in sorted((tmp / "runs").rglob("*")) if p.is_file() and ".batch.lock" not in p.name}

def cli_probe(argv):
    before = snap(); err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    except BaseException as e:
        return "traceback", f"{type(e).__name__}: {e}"
    if snap() != before: return "lost results", ""
    if code == 0: return "exit 0 on invalid", ""
    if "Traceback" in err.getvalue(): return "traceback", err.getvalue()[-200:]
    return "clear error", err.getvalue().strip().splitlines()[-1][:150]

for argv, frag in CASES:
    if "readonly" in " ".join(argv): continue  # root writes anywhere
    argv = [a.replace(T, str(tmp)).replace("{nb}", str(nb)) for a in argv]
    cls, msg = cli_probe(argv); counts[cls] += 1; log.append((cls, " ".join(argv)[:80], msg))
extra = [
    ["discover", "--threshold", "0"], ["discover", "--threshold", "-0.0"], ["discover", "--heads", "a,b"],
    ["discover", "--heads", "[[0]]"], ["discover", "--tokens", "0"], ["discover", "--tokens", "x"],
    ["discover", "--calibration-text", str(tmp / "afile") + ".md"], ["discover", "--max-neurons", "-3"],
    ["batch", "--notebook-dir", str(nb), "--out", str(tmp / "runs"), "--grid", "seed="],
    ["batch", "--notebook-dir", str(nb), "--out", str(tmp / "runs"), "--grid", "=1"],
    ["batch", "--notebook-dir", str(nb), "--out", str(tmp / "runs"), "--grid", "seed"],
    ["batch", "--notebook-dir", str(nb), "--out", str(tmp / "runs"), "--shard", "3/2"],
    ["batch", "--notebook-dir", str(nb), "--out", str(tmp / "runs"), "--shard", "0/0"],
    ["batch", "--notebook-dir", str(nb), "--out", str(tmp / "runs"), "--grid", "heads=[[0],[]]"],
    ["batch", "--notebook-dir", str(nb), "--out", str(tmp / "runs"), "--set", "n_texts=1e9x"],
    ["batch", "merge", "--out", str(tmp / "m")], ["batch", "merge", str(tmp / "afile"), "--out", str(tmp / "m")],
    ["prefetch", "--seed", "x"], ["edition", "/no/such/dir"], ["nosuchverb"],
    ["prefetch", "--model", "gpt2"],  # the hub is unreachable here
    ["discover", "--model", "gpt2"],
    ["discover", "--model", "no-such-org/no-such-model"],
    ["discover", "--model", "toy", "--corpus", "openwebtext"],  # its calibration text needs the hub
    ["discover", "--model", "toy", "--calibration-text", str(tmp / "bad.jsonl")],
    ["discover", "--model", "toy", "--calibration-text", "too short a text, hardly any tokens at all."],
    ["discover", "--model", "toy", "--heads", "0,99"],
]
(tmp / "bad.jsonl").write_text('{"nottext": 1}\n')
for argv in extra:
    cls, msg = cli_probe(argv); counts[cls] += 1; log.append((cls, " ".join(argv)[:80], msg))
for raw, frag in NOTEBOOK_CASES:
    try:
        validate(raw); cls = "exit 0 on invalid"
    except ParameterError as e:
        cls = "clear error" if "\n" not in str(e) else "traceback"
    except Exception as e:
        cls = "traceback"
    counts[cls] += 1; log.append((cls, f"notebook {raw}", ""))

os.environ["CTXN_CACHE"] = str(tmp / "afile")  # the toy model cannot be built under a file
cls, msg = cli_probe(["discover", "--model", "toy"]); counts[cls] += 1; log.append((cls, "CTXN_CACHE is a file, model toy", msg))
os.environ["CTXN_CACHE"] = "/work/wt/robust/.cache-tests"

# Faults (correct handling = "handled correctly")
def fault(name, ok):
    counts["handled correctly" if ok else "silent wrong"] += 1; log.append(("handled correctly" if ok else "silent wrong", name, ""))
# repeated --grid combines
fault("grid seed=0,1 + seed=2,3 -> 4 sets", len(batch.expand_grid({}, batch.parse_grid([("seed", "0,1"), ("seed", "2,3")]))) == 4)
# env identity
os.environ["CTXN_N_TEXTS"] = "64"; j1 = batch.plan([nb / "01_demo.ipynb"], [{"seed": 1}], tmp / "o")[0]
del os.environ["CTXN_N_TEXTS"]; j2 = batch.plan([nb / "01_demo.ipynb"], [{"seed": 1}], tmp / "o")[0]
fault("CTXN_N_TEXTS=64 is another run", j1.folder != j2.folder and j1.environment)
# merge same run under two names
def fake(root, folder, seed, v):
    r = root / "01_demo" / folder; (r / "outputs/demo").mkdir(parents=True)
    (r / "outputs/demo/summary.json").write_text(json.dumps({"headline": {"v": v}}))
    (r / "run.json").write_text(json.dumps({"notebook": "01_demo.ipynb", "parameters": {"seed": seed}, "identity": batch.run_identity("01_demo", {"seed": seed}, {}), "files": batch._file_manifest(r)}))
fake(tmp / "s1", "a", 1, 1.0); fake(tmp / "s2", "b", 1, 1.0)
rep = batch.merge([tmp / "s1", tmp / "s2"], tmp / "mm", log=lambda l: None)
fault("same run under two folder names merged once", len(rep.merged) == 1 and len(batch.summarise(tmp / "mm")) == 1)
fake(tmp / "s3", "c", 1, 2.0)
cls, msg = cli_probe(["batch", "merge", str(tmp / "s1"), str(tmp / "s3"), "--out", str(tmp / "mm2")]); counts[cls] += 1; log.append((cls, "merge conflicting duplicates", msg))
# damaged run refused
fake(tmp / "s4", "d", 2, 1.0); (tmp / "s4/01_demo/d/outputs/demo/summary.json").write_text('{"headline": {"v": 9}}')
cls, msg = cli_probe(["batch", "merge", str(tmp / "s4"), "--out", str(tmp / "mm3")]); counts[cls] += 1; log.append((cls, "merge damaged copy", msg))
# lock
with batch.exclusive(tmp / "runs"):
    cls, msg = cli_probe(["batch", "--notebook-dir", str(nb), "--out", str(tmp / "runs"), "--grid", "seed=5"])
counts[cls] += 1; log.append((cls, "second batch on a locked --out", msg))
# cache faults: a file, a read-only store that fails
import torch
from ctxneurons.io import cache
(tmp / "cachefile").write_text("x"); os.environ["CTXN_CACHE"] = str(tmp / "cachefile")
out = cache.cached("k", {"a": 1}, lambda: {"x": torch.ones(2)})
fault("cache folder is a file: result returned", torch.equal(out["x"], torch.ones(2)))
os.environ["CTXN_CACHE"] = ""
fault('CTXN_CACHE="" means the default', cache.default_root() == Path.home() / ".cache/ctxneurons/intermediates")
import ctxneurons.io.atomic as atomic
real = atomic.os.replace
def failing(*a): raise OSError(28, "No space left on device")
cache.atomic_write_bytes.__globals__["os"].replace = failing
try:
    out = cache.store("k", {"b": 2}, {"x": torch.zeros(3)}, root=tmp / "c2")
    fault("cache fails mid-store: result returned", torch.equal(out["x"], torch.zeros(3)))
finally:
    atomic.os.replace = real
# corpus: jsonl calibration
from ctxneurons.io import corpus
(tmp / "cal.jsonl").write_text('{"text": "Hello there."}\n{"text": "Second."}\n')
fault("jsonl calibration read as its texts", corpus.load_calibration_text(str(tmp / "cal.jsonl")).text == "Hello there.\n\nSecond.")
try: corpus.load_calibration_text(str(tmp / "bad.jsonl")); fault("jsonl without text refused", False)
except corpus.CorpusError: fault("jsonl without text refused", True)
# live: truncated neuron file
from ctxneurons.book import live
from ctxneurons.method.circuit import Circuit
from tests.conftest import gpt2_tokenizer
V, N = 50257, 8
c = Circuit(heads=(0,), kernel=torch.tril(torch.ones(N, N)) / 8, log_denoms=torch.zeros(N), scores=torch.zeros(1), contribution=torch.randn(V, 4) * 0.1, offset=torch.zeros(N, 4), ln2_scale=1.0, C=1.0, value_C=0.0, calibration_position=4, query_token=0)
m = live.export(c, [1, 2], gpt2_tokenizer(), tmp / "live")
p = tmp / "live/neuron-1.bin"; p.write_bytes(p.read_bytes()[:1000])
try: live.approximate_from_export(tmp / "live", 1, [10, 11]); fault("truncated live file detected", False)
except live.DamagedExport: fault("truncated live file detected", True)
js = (Path(__file__).resolve().parents[1] / "book/js/ctxneurons_live.js").read_text()
fault("live page checks sizes/hashes/non-finite", "the manifest says" in js and "SHA-256" in js and "not a number" in js)
print(json.dumps(counts, indent=1)); print("total", sum(counts.values()))
for row in log:
    if row[0] not in ("clear error", "handled correctly"): print(row)
for row in log[:200]: print(row[0][:12].ljust(12), row[1][:70].ljust(70), row[2][:110])
