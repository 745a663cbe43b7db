"""A run's data: its corpus, its calibration text and its test texts, drawn once.

``RunTexts`` is a mixin of :class:`ctxneurons.book.experiment.Run` (which supplies
``params`` and ``w``). Drawing is deterministic in (corpus, seed, tokenizer, n_tokens);
the hub commit a corpus was read at is reported by ``corpus_revision`` once texts were
drawn from it, read off the draws rather than stored as a side effect of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import torch

from ctxneurons.io import corpus
from ctxneurons.io.model import is_toy
from ctxneurons.method import decomposition, stable_heads
from ctxneurons.method.circuit import PAPER_HEADS, other_calibrations

log = logging.getLogger(__name__)

CALIBRATION_SEED_OFFSET = 7919  # the default calibration text is drawn with seed + this, apart from the test texts
OTHER_CALIBRATIONS_SEED_OFFSET = 101  # chapter 04's other calibration texts: seed + this


@dataclass(frozen=True)
class _CalibrationPick:
    text: corpus.CalibrationText
    doc_id: int | None  # its document id in the test corpus, when drawn from it
    revision: str | None  # the corpus's hub commit, when drawn from a hub corpus


class RunTexts:
    @cached_property
    def n_tokens(self) -> int:
        n = self.params.get("n_tokens", 0)
        return self.w.n_ctx if n in (0, None) else min(n, self.w.n_ctx)

    @cached_property
    def corpus(self) -> str:
        c = self.params.get("corpus", "auto")
        if c == "auto":
            return "toy" if is_toy(self.params["model"]) else "openwebtext"
        return c

    @cached_property
    def _calibration_pick(self) -> _CalibrationPick:
        given = self.params.get("calibration_text")
        if given is not None:
            return _CalibrationPick(corpus.load_calibration_text(given), None, None)
        if self.corpus == "toy":
            from ctxneurons import toy

            return _CalibrationPick(corpus.CalibrationText(text=toy.calibration_text(), name="toy-calibration"), None, None)
        # A corpus text drawn with another seed; ``texts`` keeps it out of the test set.
        # Long enough for the texts and for the calibration position n_ctx/2 (GPT-Neo: 1024).
        length = max(self.n_tokens, self.calibration_position + 1)
        pick = corpus.select_token_batch(self.corpus, self.w.tokenizer, 1, length,
                                         seed=self.params["seed"] + CALIBRATION_SEED_OFFSET)
        text = corpus.CalibrationText(text=pick.texts[0], name=f"{self.corpus}#{pick.doc_ids[0]}")
        return _CalibrationPick(text, pick.doc_ids[0], pick.revision)

    @property
    def corpus_revision(self) -> str | None:
        """The hub commit of the corpus, once texts were drawn from it (None before, and for local corpora)."""
        drawn = self.__dict__
        if "texts" in drawn and drawn["texts"].revision:
            return drawn["texts"].revision
        return drawn["_calibration_pick"].revision if "_calibration_pick" in drawn else None

    @property
    def calibration(self) -> corpus.CalibrationText:
        return self._calibration_pick.text

    @property
    def calibration_doc(self) -> int | None:
        """The calibration text's document id in the corpus, when it was drawn from it."""
        return self._calibration_pick.doc_id

    @cached_property
    def calibration_position(self) -> int:
        return self.w.n_ctx // 2

    @cached_property
    def calibration_tokens(self) -> torch.Tensor:
        """Tokens 0..calibration_position of the calibration text: [n_cal + 1]. Logs a warning
        when much of the text is unknown to the model's tokenizer (an English text on the toy)."""
        tokens = corpus.calibration_tokens(self.calibration, self.w.tokenizer, self.calibration_position)
        share = corpus.unknown_share(tokens[1:], self.w.tokenizer)
        if note := corpus.unknown_warning(share, f"calibration text {self.calibration.name!r}", self.w.name):
            log.warning(note)
        return tokens.to(self.w.device)

    @cached_property
    def texts(self) -> corpus.TokenBatch:
        """The test texts: tokens [n_texts, n_tokens]. The calibration text is never among them."""
        n = self.params["n_texts"]
        excluded = self.calibration_doc
        batch = corpus.select_token_batch(self.corpus, self.w.tokenizer, n + (excluded is not None), self.n_tokens,
                                          seed=self.params["seed"])
        keep = [i for i, d in enumerate(batch.doc_ids) if d != excluded][:n]
        return corpus.TokenBatch(batch.tokens[keep], [batch.doc_ids[i] for i in keep], [batch.texts[i] for i in keep],
                                 batch.source, batch.revision)

    def other_calibrations(self, k: int) -> list[tuple[str, torch.Tensor, str]]:
        """Up to k other calibration texts from this run's corpus, none of them a test text or
        the run's own: (name "corpus#doc", tokens [n_cal + 1] on the model's device, sha256)."""
        taken = set(self.texts.doc_ids) | {self.calibration_doc}
        others = corpus.select_token_batch(self.corpus, self.w.tokenizer, k + len(taken), self.calibration_position + 1,
                                           seed=self.params["seed"] + OTHER_CALIBRATIONS_SEED_OFFSET)
        return [(name, tokens.to(self.w.device), sha) for name, tokens, sha in other_calibrations(others, taken, k)]

    @cached_property
    def head_pick(self) -> stable_heads.HeadPick:
        """The stable-heads rule on this run's model and texts (chapter 01 shows it)."""
        return stable_heads.pick_heads(self.w, self.texts.tokens, self.the, self.C, self.params.get("query_position", -1))

    @property
    def heads(self) -> tuple[int, ...]:
        """The circuit's heads: the ``heads`` parameter, or with 'auto' the stable-heads rule's
        pick (:class:`~ctxneurons.errors.PremiseFails` when it picks none)."""
        return stable_heads.resolve(self.params.get("heads", PAPER_HEADS), lambda: self.head_pick)

    @property
    def premise_holds(self) -> bool:
        """Whether the run has circuit heads: False only when the ``heads`` parameter is 'auto'
        and the stable-heads rule picks none (a list of heads is taken as given, unchecked)."""
        return self.params.get("heads", PAPER_HEADS) != stable_heads.AUTO or self.head_pick.premise_holds

    @property
    def C(self) -> float:
        return self.params.get("C", decomposition.DEFAULT_C)

    @property
    def the(self) -> int:
        return self.w.token_id(" the")

    def token_str(self, ids) -> list[str]:
        """Each token id of ids [k] decoded on its own."""
        return [self.w.tokenizer.decode([int(i)]) for i in ids]
