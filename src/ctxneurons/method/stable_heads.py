"""Which heads the contextual circuit may use: the paper's definition of its heads (METHOD.md
§2-3), a slowly decaying positional kernel **and** a denominator that concentrates, read off
every head of a model instead of taken from GPT-2 Small's list.

Kernel shape alone does not find them. On GPT-2 Small's layer 0 it also calls "slow" the
duplicate-token heads 1 and 5 (broad kernels, but a key holding the query's own token
outweighs the rest, so their denominators follow how often that token occurs) and heads
that park weight on BOS. So per head:

- its kind, from its kernel (:func:`kernels.classify_heads`: local, slow, uniform, first-token);
- its content dependence, from the weights: the duplicate-token score (how much higher a
  key scores holding the query's own token than another token) and the spread of content
  scores between different tokens (:func:`content_dependence`);
- its denominator's spread across texts at one position and query, measured, beside the
  i.i.d. prediction with the fixed BOS key held fixed (:func:`denominators.concentration`).

The rule (:func:`choose`) keeps a head whose kernel is slow, which excludes sinks and
uniform heads, and whose measured denominator CV is at most CV_STABLE_MAX. When it keeps no
head, the circuit's premise fails for the model: :class:`HeadPick` says so, and
:meth:`HeadPick.require` raises :class:`~ctxneurons.errors.PremiseFails` rather than fall back to a fixed list.

Shapes: N texts, m tokens per text, H heads, T tokens, e d_head, V vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from ctxneurons.errors import PremiseFails  # defined torch-free, for the command line to catch
from ctxneurons.method import decomposition, denominators, forward, kernels
from ctxneurons.method.decomposition import DEFAULT_C
from ctxneurons.method.forward import full_precision
from ctxneurons.method.weights import Layer0

# A denominator is stable when its CV across texts is at most this. The circuit samples each
# head's denominator on one calibration text and uses it for every text, so a CV of c puts a
# per-text scale error of about c on the head's term: 0.25 costs that term ~0.25^2 = 6% of
# its variance, under half the paper's median FVU (0.14). On GPT-2 Small's real layer-0
# attention, LayerNorm and position weights (token embeddings of GPT-2's typical norm stood
# in for its own; issue 23) the paper's six heads measure 0.05-0.14 and the duplicate-token
# heads 5 and 1 0.34 and 0.56 (position 256, query ' the', 64 WebText texts): the
# threshold sits in that gap.
CV_STABLE_MAX = 0.25
# A head is a duplicate-token head when a key holding the query's own token scores at least
# this much above an average other token: e^4 ~ 55, so one repeat of the query's token
# outweighs ~55 other keys and the head's output follows that token's repeats. GPT-2 Small's
# heads 1 and 5 score ~13 and ~19, its "partly" duplicate-token head 10 ~3, the rest below 0
# by the isotropic estimate tr(W_Q W_K^T)/sqrt(d_head) (LN folded, tokens of the full
# post-LN norm); :func:`content_dependence` gives the token only its share of the LN'd
# residual beside the position, which lowers every score by the same factor (about a half
# where |W_pos| ~ |W_E|). Reported, not part of the rule: such a head fails the rule through
# its unstable denominator.
DUPLICATE_TOKEN_MIN = 4.0
N_SCORE_TOKENS = 512  # the corpus's most frequent tokens over which content scores are compared


@full_precision
def content_score_matrix(w: Layer0, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """S[h, a, b] = q_n(a) . E[n, b] / sqrt(e): the content score a query holding token a at
    position n gives a key holding token b, both at n (so the positional part P[n, n] = 0 and
    the key bias, the same for every key, are left out): tokens [T] -> [H, T, T]."""
    x_hat, _ = forward.layer_norm(w.W_E[tokens] + w.W_pos[n], w.eps)
    q = forward.project(x_hat[None], w.W_Q, w.b_Q)[0]  # [H, T, e]
    k = decomposition.content_keys(w, tokens, n)  # [H, T, e]
    return q @ k.transpose(-1, -2) / math.sqrt(w.d_head)


@dataclass(frozen=True)
class ContentDependence:
    """Per head [H]: duplicate_token, mean over query tokens a of S[a, a] - mean_{b != a} S[a, b];
    spread, mean over a of the standard deviation of S[a, b] over b != a (both in logits)."""

    duplicate_token: torch.Tensor
    spread: torch.Tensor


@full_precision
def content_dependence(w: Layer0, tokens: torch.Tensor, n: int) -> ContentDependence:
    """The duplicate-token score and content spread of every head over distinct tokens [T]
    (T >= 3) at position n, from :func:`content_score_matrix`: -> two [H]."""
    T = tokens.shape[0]
    if T < 3:
        raise ValueError(f"content scores need at least 3 distinct tokens, got {T}")
    S = content_score_matrix(w, tokens, n).double()
    diag = S.diagonal(dim1=-2, dim2=-1)  # [H, T]
    mean_other = (S.sum(-1) - diag) / (T - 1)
    sq_other = (S - mean_other[..., None]).pow(2).sum(-1) - (diag - mean_other).pow(2)
    return ContentDependence(
        duplicate_token=(diag - mean_other).mean(-1),
        spread=(sq_other / (T - 2)).clamp_min(0).sqrt().mean(-1),
    )


def frequent_tokens(tokens: torch.Tensor, k: int = N_SCORE_TOKENS) -> torch.Tensor:
    """The at most k most frequent distinct tokens of tokens [...], most frequent first: -> [T].
    Ties go to the smaller id, so the choice is deterministic."""
    ids, counts = tokens.flatten().unique(return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-int(counts[i]), int(ids[i])))[:k]
    return ids[order]


def choose(kinds: list[str], cv: torch.Tensor, cv_max: float = CV_STABLE_MAX) -> list[int]:
    """The rule: heads whose kernel is slow (not local, uniform or a sink) and whose
    denominator CV across texts, cv [H], is at most ``cv_max``; sorted."""
    return sorted(h for h, kind in enumerate(kinds) if kind == "slow" and float(cv[h]) <= cv_max)


def _reason(kind: str, cv: float, cv_max: float) -> str:
    if kind != "slow":
        return f"kernel is {kind}, not slowly decaying"
    if not cv <= cv_max:
        return f"denominator unstable: CV {cv:.3f} > {cv_max}"
    return f"slow kernel, stable denominator (CV {cv:.3f} <= {cv_max})"


@dataclass
class HeadPick:
    """What :func:`pick_heads` finds: the rule's ``heads`` (sorted), the per-head ``table``
    (see TABLE_COLUMNS), the query ``position`` n of kernels, scores and denominators, and
    ``n_texts``, the texts the denominators were measured on."""

    heads: list[int]
    table: pd.DataFrame
    position: int
    n_texts: int
    model: str = "unnamed"

    @property
    def premise_holds(self) -> bool:
        """Whether any head qualifies: the circuit's premise, a head with a slow kernel and a
        stable denominator, holds for the model."""
        return bool(self.heads)

    @property
    def message(self) -> str:
        """One sentence on the result, for the chapters to print."""
        if self.heads:
            return f"{self.model}: heads {', '.join(map(str, self.heads))} have a slowly decaying kernel and a stable denominator"
        return (f"{self.model}: no head has both a slowly decaying kernel and a stable denominator "
                f"(CV <= {CV_STABLE_MAX} at position {self.position}): the circuit's premise fails for this model, "
                "and no neurons are reported through it")

    def require(self) -> list[int]:
        """The heads, or :class:`~ctxneurons.errors.PremiseFails` when there are none."""
        if not self.heads:
            raise PremiseFails(self.message)
        return list(self.heads)

    def headline(self) -> dict:
        """The summary keys chapter 01 writes: head_kinds {head: kind}, duplicate_token_heads,
        denominator_cv_by_head {head: measured CV}, denominator_cv_iid_by_head, stable_heads (the
        rule's pick, sorted ints) and the rule's thresholds and verdict."""
        t = self.table
        return {
            "head_kinds": {str(h): k for h, k in zip(t["head"], t["kind"])},
            "duplicate_token_heads": [int(h) for h in t.loc[t["duplicate_token"], "head"]],
            "denominator_cv_by_head": {str(h): _finite(v) for h, v in zip(t["head"], t["cv_measured"])},
            "denominator_cv_iid_by_head": {str(h): _finite(v) for h, v in zip(t["head"], t["cv_iid"])},
            "stable_heads": [int(h) for h in self.heads],
            "stable_heads_premise_holds": self.premise_holds,
            "stable_heads_cv_max": CV_STABLE_MAX,
            "duplicate_token_min": DUPLICATE_TOKEN_MIN,
            "first_token_min_ratio": kernels.FIRST_TOKEN_MIN_RATIO,
            "stable_heads_position": self.position,
            "stable_heads_n_texts": self.n_texts,
        }


def _finite(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


TABLE_COLUMNS = {
    "head": "layer-0 attention head",
    "kind": "local / slow / uniform / first-token (a sink), from the kernel at the query position",
    "effective_window": "1 / sum_i pos[n, i]^2 over positions 1..n, in tokens",
    "mean_distance": "sum_i pos[n, i] (n - i) over positions 1..n, in tokens",
    "weight_on_first": "pos[n, 0], the kernel's weight on the BOS position",
    "duplicate_token_score": "mean over query tokens of the content score of a key holding the same token minus that of the other tokens (logits)",
    "duplicate_token": f"duplicate_token_score >= {DUPLICATE_TOKEN_MIN}: a repeat of the query's token outweighs ~55 other keys",
    "content_spread": "mean over query tokens of the std of content scores across the other tokens (logits)",
    "cv_measured": "std / mean across the texts of the head's denominator at the query position, query ' the'",
    "cv_iid": ("the same predicted for i.i.d. key tokens from the texts' unigram distribution, the BOS key held fixed "
               "(meaningless for a first-token head: its content scores at n carry its large positional score there)"),
    "stable": f"cv_measured <= {CV_STABLE_MAX}",
    "picked": "the rule keeps the head: slow kernel and stable denominator",
    "reason": "why the rule keeps or rejects the head",
}


@full_precision
def pick_heads(w: Layer0, tokens: torch.Tensor, query_token: int, C: float = DEFAULT_C, query_position: int = -1,
               n_score_tokens: int = N_SCORE_TOKENS, cv_max: float = CV_STABLE_MAX, batch_size: int = 8) -> HeadPick:
    """Every head's kind, content dependence and denominator stability, and the rule's pick,
    from the weights and texts tokens [N, m] (N >= 2, BOS first as the book's texts are).

    All at one query position n (``query_position``; -1: the kernels' n_ctx/2 - 12, clipped
    to the texts) with query ``query_token``: the kernel row pos[n, :], the denominators of
    the texts' keys 0..n, and the content scores of the texts' n_score_tokens most frequent
    tokens (position 0 left out) at n.
    """
    N, m = tokens.shape
    if N < 2:
        raise ValueError(f"a denominator's spread across texts needs at least 2 texts, got {N}")
    n = kernels.resolve_query_position(query_position, w.n_ctx, m)
    with torch.inference_mode():
        K = kernels.positional_kernel(w, query_token, n, C)  # [H, n+1]
        classes = kernels.classify_heads(K.cpu())
        dep = content_dependence(w, frequent_tokens(tokens[:, 1:], n_score_tokens).to(w.device), n)
        prefix = tokens[:, : n + 1]
        log_at = torch.cat([denominators.log_denominators(w, b.to(w.device), query_token)[:, :, n].cpu()
                            for b in prefix.split(batch_size)])  # [N, H]
        p_token = denominators.token_distribution(prefix[:, 1:], w.d_vocab)
        conc = denominators.concentration(w, log_at, K, query_token, n, p_token, first_token=denominators.fixed_first_token(tokens))
    cv = torch.tensor([c.cv_empirical for c in conc])
    kinds = [c.kind for c in classes]
    heads = choose(kinds, cv, cv_max)
    table = pd.DataFrame({
        "head": list(range(w.n_heads)),
        "kind": kinds,
        "effective_window": [c.effective_window for c in classes],
        "mean_distance": [c.mean_distance for c in classes],
        "weight_on_first": [c.weight_on_first for c in classes],
        "duplicate_token_score": dep.duplicate_token.cpu().numpy(),
        "duplicate_token": (dep.duplicate_token >= DUPLICATE_TOKEN_MIN).cpu().numpy(),
        "content_spread": dep.spread.cpu().numpy(),
        "cv_measured": cv.numpy(),
        "cv_iid": [c.cv_iid for c in conc],
        "stable": (cv <= cv_max).numpy(),
        "picked": [h in heads for h in range(w.n_heads)],
        "reason": [_reason(k, float(v), cv_max) for k, v in zip(kinds, cv)],
    })
    return HeadPick(heads=heads, table=table, position=n, n_texts=N, model=w.name)


def with_reference(pick: HeadPick, reference_heads: Sequence[int]) -> pd.DataFrame:
    """The pick's per-head table with a column ``in_reference`` after ``picked``: whether
    the head is in reference_heads (the paper's six for GPT-2 Small), so that a chapter
    shows the rule's pick against it head by head."""
    t = pick.table.copy()
    t.insert(t.columns.get_loc("picked") + 1, "in_reference", t["head"].isin(list(reference_heads)))
    return t


REFERENCE_COLUMN = {"in_reference": "whether the head is in the reference list (the heads parameter: the paper's six by default)"}


def paper_agreement(pick: HeadPick, paper_heads: list[int]) -> dict:
    """How the rule's pick compares with a reference list (the paper's six for GPT-2 Small):
    agrees, the heads both have, and those only one has."""
    mine, theirs = set(pick.heads), set(paper_heads)
    return {"agrees": mine == theirs, "both": sorted(mine & theirs),
            "only_rule": sorted(mine - theirs), "only_reference": sorted(theirs - mine)}


AUTO = "auto"  # the heads parameter's value that asks for the rule's pick


def resolve(heads: Sequence[int] | str, pick: Callable[[], HeadPick]) -> tuple[int, ...]:
    """A run's heads parameter as the circuit's heads: a list as given; 'auto' the rule's
    pick, computed only then (``pick`` returns a :class:`HeadPick`), and
    :class:`~ctxneurons.errors.PremiseFails` when it picks none: never a fixed list in its place."""
    if isinstance(heads, str):
        if heads != AUTO:
            raise ValueError(f"heads={heads!r}: pass a list of head indices or 'auto' (the stable-heads rule)")
        return tuple(pick().require())
    return tuple(heads)
