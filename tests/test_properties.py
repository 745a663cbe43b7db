"""Property-based tests (Hypothesis) of parameter parsing, grid expansion, merge identity,
the corpus readers and the bounded tokenising of a calibration text."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from ctxneurons.book import batch
from ctxneurons.book.params import ParameterError, validate
from ctxneurons.io import corpus

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ints = st.integers(min_value=-10**6, max_value=10**6)


@FAST
@given(st.lists(st.integers(min_value=0, max_value=64), min_size=1, max_size=12, unique=True),
       st.sampled_from(["{}", "[{}]", "({})"]), st.sampled_from([",", ", ", " "]))
def test_heads_parse_back_from_every_written_form(heads, shape, sep):
    text = shape.format(sep.join(map(str, heads))) if shape != "({})" or len(heads) > 1 else f"[{heads[0]}]"
    assert validate({"heads": text})["heads"] == heads


@FAST
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), ints))
def test_a_threshold_is_a_positive_finite_number_or_refused(value):
    try:
        t = validate({"threshold": value})["threshold"]
    except ParameterError as err:
        assert "threshold" in str(err) and "\n" not in str(err)
        return
    assert math.isfinite(t) and t > 0


@FAST
@given(st.one_of(st.text(max_size=20), ints, st.floats(), st.booleans(), st.none(), st.lists(ints, max_size=3)))
def test_any_value_of_any_int_parameter_is_coerced_or_refused_in_one_line(value):
    for name in ("n_texts", "seed", "n_tokens", "max_neurons"):
        try:
            v = validate({name: value})[name]
        except ParameterError as err:
            assert name in str(err) and "\n" not in str(err)
        else:
            assert isinstance(v, int) and not isinstance(v, bool)


grids = st.dictionaries(st.sampled_from(["seed", "n_texts", "max_neurons"]),
                        st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=4, unique=True),
                        min_size=1, max_size=3)


@FAST
@given(grids, st.integers(min_value=1, max_value=3))
def test_a_grid_is_the_product_of_its_values_however_the_options_are_split(grid, pieces):
    options = []
    for name, values in grid.items():  # each name's values spread over several --grid options
        step = max(1, math.ceil(len(values) / pieces))
        options += [(name, ",".join(map(str, values[i:i + step]))) for i in range(0, len(values), step)]
    sets = batch.expand_grid({}, batch.parse_grid(options))
    assert len(sets) == math.prod(len(v) for v in grid.values())
    assert len({json.dumps(s, sort_keys=True) for s in sets}) == len(sets)
    for name, values in grid.items():
        assert {s[name] for s in sets} == set(values)


@FAST
@given(st.lists(st.integers(min_value=0, max_value=9), min_size=2, max_size=6))
def test_a_value_listed_twice_in_a_grid_is_refused(values):
    options = [("seed", ",".join(map(str, values)))]
    if len(set(values)) == len(values):
        assert len(batch.expand_grid({}, batch.parse_grid(options))) == len(values)
    else:
        try:
            batch.parse_grid(options)
        except ParameterError as err:
            assert "more than once" in str(err)
        else:
            raise AssertionError("a repeated grid value was accepted")


def _fake_run(root: Path, folder: str, seed: int, value: float) -> None:
    run = root / "01_demo" / folder
    (run / "outputs" / "demo").mkdir(parents=True)
    (run / "outputs" / "demo" / "summary.json").write_text(json.dumps({"headline": {"v": value}}))
    identity = batch.run_identity("01_demo", {"seed": seed}, {})
    (run / "run.json").write_text(json.dumps({"notebook": "01_demo.ipynb", "parameters": {"seed": seed},
                                              "identity": identity, "files": batch._file_manifest(run)}))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=4), st.text("abcdef", min_size=1, max_size=6)),
                min_size=1, max_size=6))
def test_merge_counts_each_run_once_whatever_its_folder_names(tmp_path_factory, copies):
    tmp = tmp_path_factory.mktemp("merge")
    for i, (seed, name) in enumerate(copies):  # run `seed` copied into shard i under folder `name`
        _fake_run(tmp / f"shard{i}", f"{name}__{i}", seed, float(seed))
    report = batch.merge([tmp / f"shard{i}" for i in range(len(copies))], tmp / "out", log=lambda line: None)
    seeds = {seed for seed, _ in copies}
    assert len(report.merged) == len(seeds)
    summary = batch.summarise(tmp / "out")
    assert sorted(summary["param.seed"]) == sorted(seeds)


def test_merge_refuses_copies_of_one_run_that_disagree(tmp_path):
    _fake_run(tmp_path / "a", "x", 1, 1.0)
    _fake_run(tmp_path / "b", "y", 1, 2.0)
    try:
        batch.merge([tmp_path / "a", tmp_path / "b"], tmp_path / "out", log=lambda line: None)
    except batch.MergeConflict as err:
        assert "disagree" in str(err)
    else:
        raise AssertionError("conflicting copies were merged")
    assert not list((tmp_path / "out").glob("01_demo/*"))


texts_st = st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
                    min_size=1, max_size=8)


@FAST
@given(texts_st)
def test_a_jsonl_corpus_reads_back_the_texts_written(tmp_path_factory, texts):
    path = tmp_path_factory.mktemp("c") / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    assert corpus.load_texts(path) == texts


@FAST
@given(texts_st.filter(lambda ts: any(t.strip() for t in ts)))
def test_a_jsonl_calibration_file_is_its_texts_not_its_json(tmp_path_factory, texts):
    path = tmp_path_factory.mktemp("c") / "cal.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    cal = corpus.load_calibration_text(path)
    assert cal.text == "\n\n".join(t for t in texts if t.strip())
    assert '{"text"' not in cal.text or any('{"text"' in t for t in texts)


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from tests.conftest import gpt2_tokenizer

    return gpt2_tokenizer()


words = st.lists(st.sampled_from(["the", " cat", "  sat", "\n", "on", " résumé", "mat.", "\t", "東京", " 123", "x" * 30]),
                 min_size=1, max_size=400)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words, st.integers(min_value=1, max_value=300))
def test_calibration_tokens_of_a_prefix_equal_those_of_the_whole_text(parts, position):
    tok = _tokenizer()
    text = "".join(parts) * 20
    cal = corpus.CalibrationText(text=text, name="t")
    whole = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
    if len(whole) < position + 1:
        return
    got = corpus.calibration_tokens(cal, tok, position).tolist()
    assert got == whole[: position + 1]
