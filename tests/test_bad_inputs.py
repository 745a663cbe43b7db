"""Every CLI verb and notebook parameter, given bad input: a non-zero exit, one line that
names the input (never a traceback), before any model loads, and nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ctxneurons.book import batch, cli, experiment
from ctxneurons.book.params import ParameterError, validate

from tests.test_batch import write_demo_notebook


@pytest.fixture
def world(tmp_path):
    """A folder of bad things: a file, an empty folder, a read-only folder, a notebook folder,
    a finished runs folder whose results must survive every failure."""
    w = {"tmp": tmp_path}
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "dir.csv").mkdir()
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    w["nb"] = write_demo_notebook(tmp_path / "notebooks")
    runs = tmp_path / "runs" / "01_demo" / "seed=1__deadbeef"
    (runs / "outputs" / "demo").mkdir(parents=True)
    (runs / "outputs" / "demo" / "summary.json").write_text(json.dumps({"headline": {"twice": 2}}))
    (runs / "run.json").write_text(json.dumps({"notebook": "01_demo.ipynb", "parameters": {"seed": 1}}))
    (tmp_path / "prose.jsonl").write_text('{"nottext": 1}\n')
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02")
    yield w
    ro.chmod(0o755)


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".batch.lock")}


T = "{tmp}"
# (argv, a fragment the one-line message must hold). Each fails before a model loads.
CASES = [
    (["discover", "--threshold", "-5"], "threshold"),
    (["discover", "--threshold", "nan"], "threshold"),
    (["discover", "--threshold", "inf"], "threshold"),
    (["discover", "--threshold", "abc"], "threshold"),
    (["discover", "--heads", ""], "heads"),
    (["discover", "--heads", "[]"], "heads"),
    (["discover", "--heads", "0,0"], "duplicates"),
    (["discover", "--heads", "-1"], "heads"),
    (["discover", "--max-neurons", "0"], "max_neurons"),
    (["discover", "--calibration-text", f"{T}/missing.txt"], "missing.txt"),
    (["discover", "--calibration-text", f"{T}/empty"], "folder"),
    (["discover", "--model", f"{T}/empty"], "config.json"),
    (["discover", "--model", f"{T}/afile"], "config.json"),
    (["discover", "--model", "./nowhere"], "nowhere"),
    (["discover", "--out", f"{T}/afile/x.csv"], "is a file"),
    (["discover", "--out", f"{T}/readonly/x.json"], "permission"),
    (["discover", "--out", f"{T}/x.txt"], ".csv or a .json"),
    (["discover", "--out", f"{T}/dir.csv"], "is a folder"),
    (["discover", "--device", "tpu"], "device"),
    (["discover", "--seed", "x"], "seed"),
    (["discover", "--corpus", f"{T}/missing.jsonl"], "missing.jsonl"),
    (["discover", "--corpus", f"{T}/afile"], "suffix"),
    (["discover", "--corpus", "/dev/zero"], "special file"),
    (["discover", "--calibration-text", "/dev/zero"], "special file"),
    (["discover", "--model", "/dev/null"], "config.json"),
    (["batch", "--notebook-dir", f"{T}/empty", "--out", f"{T}/runs"], "no notebooks"),
    (["batch", "--notebook-dir", f"{T}/nowhere", "--out", f"{T}/runs"], "no such folder"),
    (["batch", "nosuch", "--notebook-dir", "{nb}", "--out", f"{T}/runs"], "nosuch"),
    (["batch", "--notebook-dir", "{nb}", "--out", f"{T}/runs", "--grid", "seed=[]"], "no values"),
    (["batch", "--notebook-dir", "{nb}", "--out", f"{T}/runs", "--grid", "seed=1,1"], "more than once"),
    (["batch", "--notebook-dir", "{nb}", "--out", f"{T}/runs", "--grid", "seed=[1,"], "JSON"),
    (["batch", "--notebook-dir", "{nb}", "--out", f"{T}/runs", "--grid", "seed=1", "--set", "seed=2"], "both"),
    (["batch", "--notebook-dir", "{nb}", "--out", f"{T}/runs", "--set", "seed=1", "--set", "seed=2"], "twice"),
    (["batch", "--notebook-dir", "{nb}", "--out", f"{T}/runs", "--set", "threshold=-5"], "threshold"),
    (["batch", "--notebook-dir", "{nb}", "--out", f"{T}/runs", "--set", "threshold=nan"], "threshold"),
    (["batch", "--notebook-dir", "{nb}", "--out", f"{T}/runs", "--set", "bogus=1"], "unknown"),
    (["batch", "--notebook-dir", "{nb}", "--out", f"{T}/afile"], "is a file"),
    (["batch", "--notebook-dir", "{nb}", "--out", f"{T}/readonly/runs"], "permission"),
    (["batch", "--notebook-dir", "{nb}", "--out", f"{T}/runs2", "--kernel", "nokernel"], "nokernel"),
    (["batch", "--notebook-dir", "{nb}", "--out", f"{T}/runs", "--set", "calibration_text=/no/such.txt"], "such.txt"),
    (["batch", "merge", f"{T}/nowhere", "--out", f"{T}/merged"], "nowhere"),
    (["batch", "merge", f"{T}/runs", "--out", f"{T}/afile"], "is a file"),
    (["prefetch", "--model", f"{T}/empty"], "config.json"),
    (["prefetch", "--n-texts", "0"], "1 or more"),
    (["prefetch", "--corpus", f"{T}/missing.jsonl", "--model", "toy"], "missing.jsonl"),
    (["edition", f"{T}/afile"], "config.json"),
]


@pytest.mark.parametrize("argv,fragment", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_ends_in_one_line_and_nonzero_exit(world, argv, fragment, capsys):
    if fragment == "permission" and os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder")
    argv = [a.replace(T, str(world["tmp"])).replace("{nb}", str(world["nb"])) for a in argv]
    before = _snapshot(world["tmp"] / "runs")
    assert _exit_code(argv) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, err  # argparse's own errors print the usage first
    assert fragment.lower() in err.lower(), err
    assert _snapshot(world["tmp"] / "runs") == before  # nothing lost or changed


def _exit_code(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit:  # argparse refuses a malformed option this way
        return exit.code


NOTEBOOK_CASES = [
    ({"threshold": -5}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"thresholds": []}, "thresholds"),
    ({"heads": []}, "heads"),
    ({"n_texts": 0}, "n_texts"),
    ({"n_tokens": 1}, "n_tokens"),
    ({"n_tokens": -3}, "n_tokens"),
    ({"top_quantile": 1.5}, "top_quantile"),
    ({"C_values": "[1, nan]"}, "C_values"),
    ({"domains": "web"}, "domains"),
    ({"models": []}, "models"),
    ({"seed": True}, "seed"),
    ({"calibration_text": "/no/such/file.txt"}, "file.txt"),
    ({"model": "/no/such/model"}, "model"),
    ({"corpus": "/no/such/texts.jsonl"}, "texts.jsonl"),
    ({"output_dir": ""}, "output_dir"),
    ({"device": "gpu"}, "device"),
]


@pytest.mark.parametrize("raw,fragment", NOTEBOOK_CASES, ids=[str(r)[:50] for r, _ in NOTEBOOK_CASES])
def test_bad_notebook_parameter_is_one_parameter_error(raw, fragment):
    with pytest.raises(ParameterError) as info:
        validate(raw)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_start_refuses_an_output_dir_under_a_file_before_loading_a_model(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    for var in [v for v in os.environ if v.startswith("CTXN_") and v != "CTXN_CACHE"]:
        monkeypatch.delenv(var)
    ns = {"model": "/no/model/needed-here-never-loaded", "n_texts": 1, "seed": 0, "device": "cpu",
          "output_dir": str(tmp_path / "afile" / "out")}
    with pytest.raises(ParameterError, match="model"):
        experiment.start("x", ns)
    ns["model"] = "toy"
    with pytest.raises(ParameterError, match="is a file"):
        experiment.start("x", ns)


def _python(code: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_help_does_not_import_torch():
    code = ("import sys\nfrom ctxneurons.book import cli\n"
            "for argv in (['--help'], ['batch', '--help'], ['batch', 'merge', '--help'], ['discover', '--help']):\n"
            "    try: cli.main(argv)\n"
            "    except SystemExit: pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "NO-TORCH"


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(ParameterError):
        cli.main(["discover", "--threshold", "-5", "--debug"])


def test_an_unexpected_error_says_it_is_a_bug_in_one_line(monkeypatch, capsys):
    def boom(*a, **k):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(batch, "find_notebooks", boom)
    assert cli.main(["batch"]) == 1
    err = capsys.readouterr().err
    assert "ZeroDivisionError" in err and "--debug" in err and len(err.strip().splitlines()) == 1


def test_a_second_batch_on_the_same_out_is_refused_naming_the_holder(tmp_path):
    with batch.exclusive(tmp_path / "runs", "test batch"):
        with pytest.raises(batch.BatchError, match=f"pid {os.getpid()}"):
            with batch.exclusive(tmp_path / "runs"):
                pass
    with batch.exclusive(tmp_path / "runs"):  # released: the next one goes ahead
        pass


def test_an_environment_override_is_another_run_and_is_recorded(world, monkeypatch):
    for var in [v for v in os.environ if v.startswith("CTXN_") and v != "CTXN_CACHE"]:
        monkeypatch.delenv(var)
    nbs = batch.find_notebooks([], world["nb"])
    sets = batch.expand_grid({"seed": "1"}, {})
    plain = batch.plan(nbs, sets, world["tmp"] / "out")[0]
    monkeypatch.setenv("CTXN_N_TEXTS", "64")
    env = batch.plan(nbs, sets, world["tmp"] / "out")[0]
    assert env.folder != plain.folder  # not "skipped" as the plain run
    assert env.params["n_texts"] == 64 and env.environment == {"CTXN_N_TEXTS": "64"}
    assert env.identity["environment"] == {"CTXN_N_TEXTS": "64"} and "ctxneurons" in env.identity
    monkeypatch.setenv("CTXN_N_TEXTS", "sixty")
    with pytest.raises(ParameterError, match="n_texts='sixty' must be an integer .set by the environment variable CTXN_N_TEXTS"):
        batch.plan(nbs, sets, world["tmp"] / "out")
