"""A text the model cannot read is said to be so (issue 24): on the offline toy, whose
tokenizer knows only its synthetic words and English function words, an English calibration
text is mostly placeholders, and the run warns how much and what to do. GPT-2's byte-level
tokenizer has no placeholder, and the toy's own texts have none under the toy."""

from __future__ import annotations

import logging
import os

import pytest

from ctxneurons import toy
from ctxneurons.book import experiment
from ctxneurons.io import corpus


def test_an_english_text_is_mostly_placeholders_on_the_toy_and_none_on_gpt2(webtext, tiny):
    english = webtext[0]
    toy_tok = toy.tokenizer()
    on_toy = corpus.unknown_share(corpus.calibration_tokens(corpus.load_calibration_text(english), toy_tok, 100)[1:], toy_tok)
    own = corpus.calibration_tokens(corpus.load_calibration_text(toy.calibration_text()), toy_tok, 100)[1:]
    on_gpt2 = corpus.calibration_tokens(corpus.load_calibration_text(english), tiny.tokenizer, 100)[1:]
    assert on_toy > 0.3 and corpus.unknown_share(own, toy_tok) == 0 and corpus.unknown_share(on_gpt2, tiny.tokenizer) == 0
    note = corpus.unknown_warning(on_toy, "calibration text 'mine.txt'", "toy")
    assert f"{on_toy:.0%}" in note and "'mine.txt'" in note and "toy.calibration_text()" in note
    assert corpus.unknown_warning(corpus.UNKNOWN_WARN, "x", "toy") is None


@pytest.mark.parametrize("english", [True, False])
def test_a_run_on_the_toy_warns_of_an_english_calibration_text_only(english, webtext, toy_dir, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("CTXN_CACHE", str(toy_dir.parent))
    for var in [v for v in os.environ if v.startswith("CTXN_") and v != "CTXN_CACHE"]:
        monkeypatch.delenv(var)
    text = " ".join(webtext[:8]) if english else toy.calibration_text()  # long enough for n_ctx/2 + 1 tokens
    params = {"model": "toy", "n_texts": 2, "n_tokens": 0, "device": "cpu", "seed": 0, "output_dir": str(tmp_path),
              "calibration_text": text}
    run = experiment.open_run("contextual_circuit", experiment.validate(params))
    with caplog.at_level(logging.WARNING, logger="ctxneurons"):
        run.calibration_tokens
    warned = [r.getMessage() for r in caplog.records if "unknown to" in r.getMessage()]
    assert bool(warned) == english, warned
