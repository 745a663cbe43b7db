import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ctxneurons.io import cache

from ctxneurons.book import experiment
from ctxneurons.book.experiment import ParameterError


@pytest.fixture
def corpus_file(tmp_path, webtext):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in webtext[:200]))
    return path


def _params(tiny_dir, corpus_file, tmp_path, **kw):
    return {"model": str(tiny_dir), "corpus": str(corpus_file), "calibration_text": None, "n_texts": 3,
            "n_tokens": 0, "heads": [0, 2], "device": "cpu", "seed": 0, "output_dir": str(tmp_path / "out"), **kw}


def test_run_loads_texts_calibration_and_writes_outputs(tiny_dir, corpus_file, tmp_path, monkeypatch):
    monkeypatch.setenv("CTXN_CACHE", str(tmp_path / "cache"))
    ns = _params(tiny_dir, corpus_file, tmp_path, In=[], get_ipython=print)
    run = experiment.start("demo", ns)
    assert run.texts.tokens.shape == (3, 128) and run.heads == (0, 2)
    assert run.calibration.name.startswith(str(corpus_file)) or "#" in run.calibration.name
    cal_doc = run.calibration_doc
    assert cal_doc is not None and cal_doc not in run.texts.doc_ids
    c1 = run.circuit()
    c2 = run.circuit()  # from the disk cache
    torch.testing.assert_close(c1.contribution, c2.contribution)
    assert c1.ln2_scale == pytest.approx(c2.ln2_scale)
    run.save_table("numbers", pd.DataFrame({"x": [1, 2]}), columns={"x": "a number"})
    run.save_summary(median=1.5)
    summary = json.loads((run.output_dir / "summary.json").read_text())
    assert summary["headline"] == {"median": 1.5} and summary["tables"] == {"numbers": "numbers.csv"}
    assert summary["calibration_text"]["sha256"] == run.calibration.sha256
    meta = json.loads((run.output_dir / "numbers.meta.json").read_text())
    assert meta["columns"] == {"x": "a number"} and meta["parameters"]["n_texts"] == 3
    with pytest.raises(ValueError, match="document every column"):
        run.save_table("bad", pd.DataFrame({"y": [1]}), columns={})
    assert "texts × 128 tokens" in run.caption


def test_tv_statistics_are_cached_by_model_texts_and_heads(tiny_dir, corpus_file, tmp_path, monkeypatch):
    from ctxneurons.method import decomposition

    monkeypatch.setenv("CTXN_CACHE", str(tmp_path / "cache"))
    run = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path))
    edges = torch.cat([torch.zeros(1), torch.logspace(-6, 0, 200)])
    direct = decomposition.tv_statistics(run.w, run.texts.tokens.split(2), [0, 2], run.C, edges)
    calls = []
    real = decomposition.tv_statistics
    monkeypatch.setattr(decomposition, "tv_statistics", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    first = run.tv_statistics([0, 2], edges)
    again = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path)).tv_statistics([0, 2], edges)  # another notebook
    other_heads = run.tv_statistics([1], edges)
    assert calls == [[0, 2], [1]]
    for got, cached, want in zip(first, again, direct):
        torch.testing.assert_close(got, want)
        assert torch.equal(got, cached)
    assert other_heads[0].shape == (3, 1)
    more = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path, n_texts=4)).tv_statistics([0, 2], edges)
    assert calls == [[0, 2], [1], [0, 2]] and more[0].shape == (4, 2)  # other texts: computed anew


def test_evaluations_are_cached_and_a_subset_of_neurons_is_read_off_an_earlier_one(tiny_dir, corpus_file, tmp_path, monkeypatch):
    from ctxneurons.method import evaluation

    monkeypatch.setenv("CTXN_CACHE", str(tmp_path / "cache"))
    run = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path))
    c = run.circuit()
    calls = []
    real = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: calls.append(a[3].tolist()) or real(*a, **k))
    first = run.evaluate(c, torch.tensor([5, 1]), n_traces=2, pool=torch.tensor([1, 9, 3]))  # 9 and 3 scored for later
    assert calls == [[5, 1, 9, 3]] and first.neurons.tolist() == [5, 1] and first.r.shape == (3, 2)
    assert len(first.traces) == 2 and first.traces[0][1].shape[-1] == 2
    whole = real(run.w, c, run.texts.tokens, torch.tensor([5, 1]), n_traces=2)
    torch.testing.assert_close(first.r, whole.r)  # scored with more neurons: equal up to the GEMMs' rounding
    torch.testing.assert_close(first.traces[1][2], whole.traces[1][2])
    later = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path))  # another notebook, same model and texts
    part = later.evaluate(later.circuit(), torch.tensor([9, 5]))
    assert calls == [[5, 1, 9, 3]] and part.neurons.tolist() == [9, 5]
    assert torch.equal(part.r[:, 1], first.r[:, 0]) and torch.equal(part.fvu[:, 1], first.fvu[:, 0])
    direct = real(run.w, c, run.texts.tokens, torch.tensor([9, 5]))
    torch.testing.assert_close(part.r, direct.r)
    later.evaluate(later.circuit(), torch.tensor([9, 7]))  # 7 was not scored: computed
    other_cal = later.circuit(calibration_tokens=run.texts.tokens[0, :65], calibration_sha="other")
    later.evaluate(other_cal, torch.tensor([9]))  # another circuit: computed
    later.evaluate(c, torch.tensor([9]), n_traces=1)  # traces are never cached
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "another version of the library")
    later.evaluate(c, torch.tensor([9]))  # results of other code are never read
    assert calls[1:] == [[9, 7], [9], [9], [9]]


@pytest.mark.parametrize(
    "override, message",
    [
        ({"n_textz": 3}, "unknown parameter.*n_textz"),
        ({"n_texts": "many"}, "n_texts='many' must be an integer"),
        ({"n_texts": 0}, "n_texts=0 must be at least 1"),
        ({"heads": [0, 0]}, "duplicates"),
        ({"heads": "0, x"}, "'x' is not an integer"),
        ({"heads": [0, 99]}, r"\[99\] outside 0..3"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"seed": 1.5}, "seed=1.5 must be an integer"),
    ],
)
def test_bad_parameters_are_reported_before_any_work(tiny_dir, corpus_file, tmp_path, override, message):
    with pytest.raises(ParameterError, match=message):
        experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path, **override))
    assert not (tmp_path / "out" / "demo" / "summary.json").exists()


def test_a_failed_run_leaves_earlier_results_intact(tiny_dir, corpus_file, tmp_path, monkeypatch):
    monkeypatch.setenv("CTXN_CACHE", str(tmp_path / "cache"))
    first = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path))
    first.save_table("numbers", pd.DataFrame({"x": [1]}), columns={"x": "a number"})
    first.save_summary(value=1)
    before = {p.name: p.read_bytes() for p in first.output_dir.iterdir()}
    second = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path, seed=1))
    second.save_table("numbers", pd.DataFrame({"x": [2]}), columns={"x": "a number"})
    # ... and dies before save_summary: the finished results are the first run's
    assert {p.name: p.read_bytes() for p in first.output_dir.iterdir()} == before
    with pytest.raises(ParameterError):
        experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path, n_texts=-1))
    assert {p.name: p.read_bytes() for p in first.output_dir.iterdir()} == before
    third = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path, seed=2))
    third.save_table("numbers", pd.DataFrame({"x": [3]}), columns={"x": "a number"})
    third.save_summary(value=3)
    assert json.loads((first.output_dir / "summary.json").read_text())["headline"] == {"value": 3}
    assert not third.staging.exists()


def test_a_parameter_shadowed_by_an_import_is_reported(tiny_dir, corpus_file, tmp_path):
    import ctxneurons.io.corpus

    with pytest.raises(ParameterError, match="corpus were replaced by a module"):
        experiment.start("demo", _params(tiny_dir, ctxneurons.io.corpus, tmp_path) | {"corpus": ctxneurons.io.corpus})


def test_papermill_style_strings_are_coerced(monkeypatch):
    monkeypatch.setenv("CTXN_N_TEXTS", "7")
    p = experiment.validate(experiment.env_overrides({"n_texts": 1000, "heads": "[0, 2, 6]", "C_values": "[1, 3.5]"})[0])
    assert p == {"n_texts": 7, "heads": [0, 2, 6], "C_values": [1.0, 3.5]}


def test_corrupt_or_old_cache_entries_are_recomputed(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(4.0)}

    key = {"model": "m", "n": 4}
    cache.cached("k", key, compute, root=tmp_path)
    cache.cached("k", key, compute, root=tmp_path)
    assert len(calls) == 1
    entry = next(tmp_path.glob("k-*.pt"))
    entry.write_bytes(entry.read_bytes()[:-10] + b"0123456789")  # corrupt
    assert cache.cached("k", key, compute, root=tmp_path)["x"].tolist() == [0, 1, 2, 3]
    assert len(calls) == 2
    monkey_version = cache.CACHE_VERSION
    try:
        cache.CACHE_VERSION = monkey_version + 1  # an entry from an older version
        cache.cached("k", key, compute, root=tmp_path)
        assert len(calls) == 3
    finally:
        cache.CACHE_VERSION = monkey_version


def test_relative_output_dir_is_taken_from_the_book_root(tmp_path, monkeypatch):
    (tmp_path / "_toc.yml").write_text("root: x\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # where the book runs a chapter
    assert experiment.resolve_output_dir("outputs") == tmp_path / "outputs"
    monkeypatch.chdir(tmp_path)  # where a user runs papermill
    assert experiment.resolve_output_dir("outputs") == tmp_path / "outputs"
    assert experiment.resolve_output_dir("/abs/out") == Path("/abs/out")


def test_a_rerun_by_default_writes_its_own_folder_and_only_the_build_writes_the_books(tiny_dir, corpus_file, tmp_path,
                                                                                         monkeypatch, capsys):
    """output_dir = None, the notebooks' default: outputs/ (what the book's pages read) only in
    a book build; any other run gets a new runs/<notebook>-<time>/outputs, named as a relative path."""
    from ctxneurons.book.figures import BOOK_BUILD_ENV

    (tmp_path / "_toc.yml").write_text("root: x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CTXN_CACHE", str(tmp_path / "cache"))
    for var in ("CTXN_OUTPUT_DIR", BOOK_BUILD_ENV):
        monkeypatch.delenv(var, raising=False)
    run = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path, output_dir=None))
    books = tmp_path / "outputs"
    assert run.output_dir.parent != books and run.output_dir.is_relative_to(tmp_path / "runs")
    assert run.params["output_dir"] == run.output_dir.parent.relative_to(tmp_path).as_posix()
    said = capsys.readouterr().out
    assert f"{run.params['output_dir']}/demo/" in said and str(tmp_path) not in said
    again = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path, output_dir="auto"))
    assert again.output_dir != run.output_dir  # a second rerun, even within the same second
    capsys.readouterr()

    monkeypatch.setenv(BOOK_BUILD_ENV, "1")
    built = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path, output_dir=None))
    assert built.output_dir == books / "demo" and capsys.readouterr().out == ""


def test_the_record_names_environment_overrides_version_and_code(tiny_dir, corpus_file, tmp_path, monkeypatch):
    monkeypatch.setenv("CTXN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CTXN_N_TEXTS", "2")
    run = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path))
    prov = run.provenance
    assert run.params["n_texts"] == 2 and prov["parameters"]["n_texts"] == 2
    assert prov["environment"] == {"CTXN_N_TEXTS": "2"}
    assert prov["ctxneurons"] and len(prov["code"]) == 16


class _Drawn:
    """Stands in for a TokenBatch drawn from a hub corpus at a commit."""

    def __init__(self, revision):
        self.revision = revision


def test_reading_the_texts_does_not_change_the_run(tiny_dir, corpus_file, tmp_path, monkeypatch):
    monkeypatch.setenv("CTXN_CACHE", str(tmp_path / "cache"))
    run = experiment.start("demo", _params(tiny_dir, corpus_file, tmp_path))
    assert run.corpus_revision is None  # nothing drawn yet
    fields_before = dict(vars(run))
    run.texts, run.calibration  # noqa: B018  (drawing is all these do)
    assert run.corpus_revision is None  # a local corpus has no hub commit
    assert {k: v for k, v in vars(run).items() if k in fields_before} == fields_before  # only caches were added
    run.__dict__["texts"] = _Drawn("abc123")  # the revision is read off what was drawn
    assert run.corpus_revision == "abc123"
