"""A neuron's core tokens and the categories among them (after Pichat et al. 2025,
*Intra-neuronal attention within language models*).

Pichat et al. take, for each neuron, the k = 100 tokens with the highest mean activation
at the positions where the token occurs, cluster them into categories, and find that
categorical homogeneity rises at the highest activation levels. Here two core-token sets
stand side by side:

- from the weights alone: the k largest contribution[j, t] over non-glitch tokens;
- from activations (Pichat's definition): the k largest mean true pre-activations at the
  positions where the token occurs, over tokens seen at least ``min_count`` times.

Categories: average-linkage hierarchical clustering of the core tokens' (centred) token
embeddings on cosine distance, cut at cophenetic distance ``cut``. Centred embeddings of
unrelated tokens are nearly orthogonal (cosine distance ~1), so a cut at 0.9 groups tokens
whose embeddings share, on average, a cosine similarity of at least 0.1.

Activation segments: the core tokens sorted by activation and split into n equal segments
(deciles for k = 100 and n = 10); a segment's homogeneity is the share of its tokens in the
segment's most common category.

Shapes: V vocabulary, J neurons, k core tokens, B texts, n positions, d d_model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ctxneurons.method import forward
from ctxneurons.method.forward import full_precision
from ctxneurons.method.weights import Layer0

DEFAULT_CUT = 0.9


def weight_core_tokens(contribution: torch.Tensor, excluded: torch.Tensor, k: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """The k tokens with the largest contributions: contribution [V, J], excluded [V] bool
    -> (ids [J, k], values [J, k]), largest first."""
    _check_k(k, int((~excluded).sum()))
    col = contribution.masked_fill(excluded.to(contribution.device)[:, None], float("-inf"))
    values, ids = col.topk(k, dim=0)
    return ids.T, values.T


@full_precision
def mean_preactivation_by_token(
    w: Layer0, batches: Iterable[torch.Tensor] | torch.Tensor, neurons: torch.Tensor, first_position: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum of each neuron's true pre-activation at the positions where each token occurs,
    and how often it occurs (positions >= first_position), over token batches [B, n]:
    -> (sums [V, J] float64, counts [V] long)."""
    if isinstance(batches, torch.Tensor):
        batches = batches.split(forward.auto_batch_size(w, batches.shape[-1]))
    J = len(neurons)
    sums = torch.zeros(w.d_vocab, J, dtype=torch.float64, device=w.device)
    counts = torch.zeros(w.d_vocab, dtype=torch.long, device=w.device)
    W_in, b_in = w.W_in[:, neurons], w.b_in[neurons]
    with torch.inference_mode():
        for tokens in batches:
            tokens = tokens.to(w.device)
            acts = forward.run(w, tokens)
            normed, _ = forward.layer_norm(acts.resid_mid[:, first_position:], w.eps)
            pre = (normed @ W_in + b_in).reshape(-1, J)
            ids = tokens[:, first_position:].flatten()
            sums.index_add_(0, ids, pre.double())
            counts.index_add_(0, ids, torch.ones_like(ids))
    return sums, counts


def activation_core_tokens(sums: torch.Tensor, counts: torch.Tensor, excluded: torch.Tensor, min_count: int = 5,
                           k: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k tokens with the highest mean pre-activation, over tokens seen at least
    ``min_count`` times and not ``excluded`` [V] bool: sums [V, J], counts [V] ->
    (ids [J, k'], means [J, k'], eligible [V] bool), with k' = min(k, eligible tokens): a
    small run has fewer eligible tokens than k, and then every one of them is a core token."""
    if min_count < 1:
        raise ValueError(f"min_count={min_count} must be at least 1 (a token never seen has no mean)")
    eligible = (counts >= min_count) & ~excluded.to(counts.device)
    n_eligible = int(eligible.sum())
    if n_eligible == 0:
        raise ValueError(f"no token is seen at least min_count={min_count} times in the texts; lower min_token_count or use more texts")
    _check_k(k, k)
    means = (sums / counts.clamp_min(1)[:, None]).masked_fill(~eligible[:, None], float("-inf"))
    values, ids = means.topk(min(k, n_eligible), dim=0)
    return ids.T, values.T.float(), eligible


def _check_k(k: int, available: int, why: str = "") -> None:
    if k < 1:
        raise ValueError(f"n_core_tokens={k} must be at least 1")
    if k > available:
        raise ValueError(f"n_core_tokens={k} but only {available} tokens are eligible{why}")


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|A ∩ B| / |A ∪ B| row by row, for id sets a [J, k] and b [J, k'] -> [J]."""
    inter = (a[:, :, None] == b[:, None, :]).any(-1).sum(-1)
    return inter / (a.shape[1] + b.shape[1] - inter)


def categories(embeddings: torch.Tensor, cut: float = DEFAULT_CUT) -> np.ndarray:
    """Hierarchical clustering of embeddings [k, d] (average linkage on cosine distance, cut
    at cophenetic distance ``cut``): -> labels [k], 0-based, largest category first."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    if not 0 < cut <= 2:
        raise ValueError(f"cluster_cut={cut} must be a cosine distance in (0, 2]")
    x = embeddings.detach().double().cpu().numpy()
    if len(x) < 2:
        return np.zeros(len(x), dtype=int)
    raw = fcluster(linkage(pdist(x, "cosine"), method="average"), t=cut, criterion="distance")
    order = [label for label, _ in Counter(raw.tolist()).most_common()]
    return np.array([order.index(label) for label in raw])


def segment_homogeneity(labels: Sequence, n_segments: int = 10) -> np.ndarray:
    """labels [k] of core tokens sorted by activation, highest first -> [n_segments]: each
    segment's share of tokens in its most common label, from the lowest segment to the
    highest. Segments are equal splits (np.array_split) of the ranking."""
    if not 1 <= n_segments <= len(labels):
        raise ValueError(f"n_segments={n_segments} must be between 1 and the number of core tokens ({len(labels)})")
    segments = np.array_split(np.asarray(list(labels), dtype=object)[::-1], n_segments)
    return np.array([Counter(s.tolist()).most_common(1)[0][1] / len(s) for s in segments])


def adjusted_rand(a: Sequence, b: Sequence) -> float:
    """The adjusted Rand index between two labellings of the same items (1: identical
    partitions, ~0: chance agreement)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score([str(x) for x in a], [str(x) for x in b]))


#: The columns of :func:`describe`'s three tables (chapter 08's core_tokens.csv, homogeneity.csv, categories.csv).
TOKENS_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "core_set": "'activation' (highest mean true pre-activation) or 'weights' (largest contribution[j, t])",
    "rank": "1 = the highest value in the set",
    "token_id": "the token's id",
    "token": "the token (decoded)",
    "value": "mean true pre-activation where the token occurs (activation) or contribution[j, t] (weights)",
    "category": "the token's category from the clustering of this neuron's set (0 = the largest)",
    "planted_category": "the toy model's planted category of the token (empty on other models)",
}
HOMOGENEITY_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "core_set": "'activation' or 'weights'",
    "labelling": "'clusters' (the embedding clustering) or 'planted' (the toy's planted categories)",
    "segment": "activation segment, 1 = the lowest values",
    "homogeneity": "share of the segment's tokens in its most common category",
}
CATEGORIES_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "core_set": "'activation' or 'weights'",
    "n_categories": "categories among the core tokens at the cut",
    "largest_category_share": "share of the core tokens in the largest category",
    "adjusted_rand": "adjusted Rand index between the clustering and the planted categories (toy only)",
}


def describe(
    W_E: torch.Tensor, neurons: Sequence[int], core_sets: dict[str, torch.Tensor], values: dict[str, torch.Tensor],
    token_str: Callable[[torch.Tensor], list[str]], cut: float = DEFAULT_CUT, n_segments: int = 10,
    planted: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Categories and homogeneity of each neuron's core tokens, for each named core set.

    W_E [V, d] the embeddings clustered; core_sets and values: name -> ids [J, k] and the
    values they were ranked by [J, k], largest first; planted [V]: a known category per
    token (the toy's topics), used as a second labelling beside the clustering.

    Returns three tidy tables: tokens (TOKENS_COLUMNS), homogeneity (HOMOGENEITY_COLUMNS)
    and categories (CATEGORIES_COLUMNS).
    """
    tokens, homogeneity, summary = [], [], []
    for name, ids_all in core_sets.items():
        for row, j in enumerate(neurons):
            ids = ids_all[row]
            cats = categories(W_E[ids.to(W_E.device)], cut)
            labellings = {"clusters": cats}
            truth = [planted[t] for t in ids.tolist()] if planted is not None else None
            if truth is not None:
                labellings["planted"] = truth
            strs = token_str(ids)
            tokens += [{"neuron": int(j), "core_set": name, "rank": r + 1, "token_id": int(t), "token": s, "value": float(v),
                        "category": int(cat), "planted_category": truth[r] if truth is not None else ""}
                       for r, (t, s, v, cat) in enumerate(zip(ids.tolist(), strs, values[name][row].tolist(), cats))]
            for labelling, labels in labellings.items():
                homogeneity += [{"neuron": int(j), "core_set": name, "labelling": labelling, "segment": s + 1, "homogeneity": float(h)}
                                for s, h in enumerate(segment_homogeneity(labels, n_segments))]
            summary.append({"neuron": int(j), "core_set": name, "n_categories": int(cats.max()) + 1,
                            "largest_category_share": float((cats == 0).mean()),
                            "adjusted_rand": adjusted_rand(cats, truth) if truth is not None else float("nan")})
    return pd.DataFrame(tokens), pd.DataFrame(homogeneity), pd.DataFrame(summary)


def mean_by_segment(homogeneity: pd.DataFrame, core_set: str, labelling: str) -> list[float]:
    """The :func:`describe` homogeneity table's mean over neurons per segment, lowest first."""
    sel = homogeneity[(homogeneity["core_set"] == core_set) & (homogeneity["labelling"] == labelling)]
    return [float(x) for x in sel.groupby("segment")["homogeneity"].mean().sort_index()]


#: The columns of :func:`overlap_frame` (chapter 08's core_overlap.csv).
OVERLAP_COLUMNS = {
    "neuron": "layer-0 MLP neuron j",
    "jaccard": "Jaccard index of the weights' core tokens (all non-glitch tokens) and the activation core tokens",
    "jaccard_eligible": "the same with the weights' core tokens drawn from the tokens eligible for the activation set only",
}


def overlap_frame(neurons: Sequence[int], weight_ids: torch.Tensor, weight_ids_eligible: torch.Tensor, activation_ids: torch.Tensor) -> pd.DataFrame:
    """Per neuron, the :func:`jaccard` of the weights' core tokens (ids [J, k], and the same
    drawn from eligible tokens only) with the activation core tokens [J, k]: neuron,
    jaccard, jaccard_eligible."""
    return pd.DataFrame({"neuron": list(neurons), "jaccard": jaccard(weight_ids, activation_ids).tolist(),
                         "jaccard_eligible": jaccard(weight_ids_eligible, activation_ids).tolist()})
