"""Which calibration text? Calibration choices scored across text domains (METHOD.md §4
and its open question on clustering calibration texts by their denominators).

A calibration text sets two numbers per circuit: each head's log-denominator log D_h at
the calibration position (query ' the') and the LN2 scale. The kernel, the content
scores s_h(t) and the values do not depend on it. So the circuit is taken apart once,

    approx_j(n) = ( sum_h exp(-log D_h(n)) sum_{i<=n} pos[n, i] g_h[t_i, j]  +  b[n, j] ) / ln2
    g_h[t, j]   = exp(s_h(t)) v_h(t) W_O^h . W_in[:, j]        (the per-head contribution)

and every calibration choice is a (log D, ln2) pair: a constant log D_h for a calibration
text, or the text's own log D_h(n) at every position n (the oracle). With a constant
log D and the calibration text's ln2 this is exactly :meth:`circuit.Circuit.approximate`.

The four choices, scored on the same test texts of every domain:

- ``default``: the book's calibration text;
- ``domain``: a text of the test text's domain that is not a test text;
- ``cluster``: a pool of candidate calibration texts from all domains, clustered
  (k-means) on their log D_h vectors; a test text goes to the cluster nearest its own
  log D_h at the calibration position (from its tokens up to there: no neuron
  activations), and is scored with that cluster's most central candidate;
- ``oracle``: the text's own log D_h(n) at every position and its own median LN2 scale.

Scores per (neuron, text): Pearson r, FVU (as in :mod:`evaluation`) and the systematic
bias, mean over positions of (approx - true) divided by the standard deviation of true.

Stop words: scikit-learn's English list (``ENGLISH_STOP_WORDS``, 318 words, from the
Glasgow Information Retrieval Group); a token counts when its text, stripped of spaces
and lower-cased, is on it. Every function word of the toy is on it.

Shapes: h circuit heads, V vocabulary, B texts, n positions, J neurons, K candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ctxneurons.io.model import is_toy
from ctxneurons.method import circuit, denominators, kernels, forward
from ctxneurons.method.circuit import Circuit, calibration_ln2_scale
from ctxneurons.method.evaluation import fvu, pearson_r
from ctxneurons.method.forward import full_precision
from ctxneurons.method.weights import Layer0

CHOICES = ("default", "domain", "cluster", "oracle")

# GPT-2 edition: beside the run's own corpus (web text), public hub datasets stored as
# data files (no loading script), one whole document per row. Source code is the real
# counterpart of the toy's terse domain: few stop words.
GPT2_DOMAINS = {
    "encyclopaedia": "hf:wikimedia/wikipedia:20231101.en:train",
    "fiction": "hf:emozilla/pg19:default:train",
    "code": "hf:codeparrot/codeparrot-clean-valid:default:train:content",
}


def toy_domains() -> dict[str, str]:
    """The toy edition's domains: the mixed corpus and every toy domain (toy.DOMAINS)."""
    from ctxneurons import toy

    return {"mixed": "toy", **{name: f"toy:{name}" for name in toy.DOMAINS}}


def default_domains(model: str, corpus: str) -> dict[str, str]:
    """``domains='auto'``: the toy's domains for the toy model, else the run's corpus
    (named 'web' when it is OpenWebText) and GPT2_DOMAINS."""
    if is_toy(model):
        return toy_domains()
    return {"web" if corpus == "openwebtext" else corpus: corpus, **GPT2_DOMAINS}


# ---------------------------------------------------------------- stop words


def stop_word_mask(token_strings: list[str]) -> torch.Tensor:
    """Which tokens are stop words: token_strings [V] (decoded) -> bool [V]."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return torch.tensor([s.strip().lower() in ENGLISH_STOP_WORDS for s in token_strings])


def stop_word_density(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The share of stop-word tokens in each row: tokens [B, n], mask [V] -> [B]."""
    return mask.to(tokens.device)[tokens].double().mean(-1)


# ---------------------------------------------------------------- the circuit taken apart


@dataclass
class Parts:
    """The circuit for J neurons, split where the calibration enters.

    kernel [N, N]: the shared kernel. head_kernels [h, N, N]: each head's own, for the
    factorised denominators. per_head [h, V, J]: g_h[t, j] exp(-ref_h), ref [h] a
    reference log D (kept for float range). offset [N, J]: the token-free part times ln2.
    """

    heads: tuple[int, ...]
    kernel: torch.Tensor
    head_kernels: torch.Tensor
    per_head: torch.Tensor
    ref: torch.Tensor
    offset: torch.Tensor
    calibration_position: int
    query_token: int


@full_precision
def circuit_parts(w: Layer0, c: Circuit, neurons: torch.Tensor) -> Parts:
    """Split circuit ``c`` (built by :func:`circuit.build_circuit`) for neurons [J]."""
    head_kernels = kernels.kernel_matrix(w.select_heads(c.heads), c.query_token, max(c.kernel.shape[-1], c.calibration_position + 1), c.C)
    per_head, offsets = circuit.head_terms(w, c, neurons, ln2_scale=1.0)
    return Parts(c.heads, c.kernel, head_kernels, per_head, c.log_denoms.clone(), offsets.sum(0),
                 c.calibration_position, c.query_token)


@full_precision
def own_log_denominators(w: Layer0, parts: Parts, tokens: torch.Tensor) -> torch.Tensor:
    """Each text's own log D_h(n) (factorised, query ' the') for the circuit's heads: tokens [B, n] -> [B, h, n]."""
    return denominators.log_factorised_denominators(w.select_heads(parts.heads), tokens, parts.query_token, parts.head_kernels)


@full_precision
def calibration_of(w: Layer0, parts: Parts, cal_tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
    """What a calibration text cal_tokens [>= n_cal + 1] sets: (log D_h at the calibration position [h], LN2 scale)."""
    n_cal = parts.calibration_position
    cal = cal_tokens[: n_cal + 1]
    log_D = own_log_denominators(w, parts, cal[None])[0, :, n_cal]
    return log_D, calibration_ln2_scale(w, cal)


def kernel_sums(parts: Parts, tokens: torch.Tensor) -> torch.Tensor:
    """sum_{i<=n} pos[n, i] g_h[t_i, j] exp(-ref_h): tokens [B, n] -> [h, B, n, J]."""
    n = tokens.shape[-1]
    return kernels.apply_kernel(parts.kernel[:n, :n], parts.per_head[:, tokens])


def approximate(parts: Parts, sums: torch.Tensor, log_D: torch.Tensor, ln2: torch.Tensor | float) -> torch.Tensor:
    """The approximation under one calibration: sums [h, B, n, J] (:func:`kernel_sums`),
    log_D [h] (a calibration text) or [B, h, n] (per text and position), ln2 a number or [B]
    -> [B, n, J]."""
    n = sums.shape[2]
    ref, log_D = parts.ref.to(sums.device), log_D.to(sums.device)
    if log_D.dim() == 1:
        weighted = torch.einsum("h,hbnj->bnj", (ref - log_D).exp(), sums)
    else:
        weighted = torch.einsum("bhn,hbnj->bnj", (ref[None, :, None] - log_D[:, :, :n]).exp(), sums)
    ln2 = torch.as_tensor(ln2, dtype=sums.dtype, device=sums.device).reshape(-1, 1, 1)
    return (weighted + parts.offset[:n]) / ln2


def bias(true: torch.Tensor, approx: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """Systematic bias: mean (approx - true) / std(true) along ``dim`` (positions):
    true, approx [B, n, J] -> [B, J] with the default dim."""
    return (approx - true).mean(dim) / true.std(dim)


# ---------------------------------------------------------------- clustering


@dataclass
class Clusters:
    """K candidates' log D vectors clustered: labels [K], centres [k, h], and for each
    cluster the index of its most central candidate (its calibration); coords [K, 2] the
    vectors' first two principal components, explained [2] their variance shares."""

    labels: np.ndarray
    centres: np.ndarray
    calibration: np.ndarray
    coords: np.ndarray
    explained: np.ndarray

    def assign(self, log_D: torch.Tensor) -> np.ndarray:
        """The nearest cluster of each vector log_D [B, h] -> [B]."""
        x = log_D.double().cpu().numpy()
        return ((x[:, None, :] - self.centres[None]) ** 2).sum(-1).argmin(1)


def cluster_candidates(log_D: torch.Tensor, n_clusters: int, seed: int = 0) -> Clusters:
    """k-means (scikit-learn, k-means++ with 10 restarts) on candidates' log D [K, h]."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = log_D.double().cpu().numpy()
    if not 1 <= n_clusters <= len(x):
        raise ValueError(f"n_clusters={n_clusters} must be between 1 and the number of candidates ({len(x)})")
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(x)
    dist = ((x[:, None, :] - km.cluster_centers_[None]) ** 2).sum(-1)  # [K, k]
    calibration = np.array([np.flatnonzero(km.labels_ == c)[dist[km.labels_ == c, c].argmin()] for c in range(n_clusters)])
    pca = PCA(n_components=min(2, x.shape[1], len(x))).fit(x)
    coords = np.zeros((len(x), 2))
    coords[:, : pca.n_components_] = pca.transform(x)
    explained = np.zeros(2)
    explained[: pca.n_components_] = pca.explained_variance_ratio_
    return Clusters(km.labels_, km.cluster_centers_, calibration, coords, explained)


# ---------------------------------------------------------------- scoring


@dataclass
class Calibration:
    """One calibration text: name, log D [h], LN2 scale, stop-word density."""

    name: str
    log_D: torch.Tensor
    ln2: float
    density: float


#: The columns of :func:`candidates_frame` (chapter 09's candidates.csv).
CANDIDATES_COLUMNS = {
    "candidate": "candidate calibration text (domain#document id)",
    "domain": "its domain",
    "doc_id": "its document id in the domain's corpus",
    "cluster": "its k-means cluster",
    "is_cluster_calibration": "whether it is its cluster's calibration (the candidate nearest the cluster's centre)",
    "density": "stop-word density over positions 1 to the calibration position",
    "ln2_scale": "its median LN2 scale (positions 1 to the calibration position)",
    "pc1": "first principal component of the candidates' log D_h vectors",
    "pc2": "second principal component",
}


def candidates_frame(candidates: list[tuple[str, object, Calibration]], clusters: Clusters) -> pd.DataFrame:
    """The candidate calibration texts, each (domain, document id, calibration), with their
    :func:`cluster_candidates` result as a tidy table with CANDIDATES_COLUMNS."""
    return pd.DataFrame([
        {"candidate": cal.name, "domain": name, "doc_id": doc, "cluster": int(clusters.labels[i]),
         "is_cluster_calibration": i in clusters.calibration, "density": cal.density, "ln2_scale": cal.ln2,
         "pc1": float(clusters.coords[i, 0]), "pc2": float(clusters.coords[i, 1])}
        for i, (name, doc, cal) in enumerate(candidates)])


#: The columns of :func:`denominators_frame` (chapter 09's calibration_denominators.csv).
DENOMINATORS_COLUMNS = {
    "calibration": "the calibration text",
    "role": "default (the book's), domain (a domain's own) or candidate (the clustering pool)",
    "domain": "its domain (empty for the book's)",
    "head": "circuit head h",
    "log_denom": "log D_h, the factorised denominator at the calibration position with query ' the'",
}


def denominators_frame(heads: tuple[int, ...], calibrations: list[tuple[str, str, Calibration]]) -> pd.DataFrame:
    """Each calibration's log D_h, from (role, domain, calibration) triples and the circuit's
    heads [h], as a tidy table with DENOMINATORS_COLUMNS."""
    return pd.DataFrame([
        {"calibration": cal.name, "role": role, "domain": dom, "head": h, "log_denom": float(v)}
        for role, dom, cal in calibrations for h, v in zip(heads, cal.log_D.tolist())])


@full_precision
def score_domain(
    w: Layer0, parts: Parts, neurons: torch.Tensor, tokens: torch.Tensor, n_score: int,
    default: Calibration, domain: Calibration, clusters: Clusters, cluster_cals: list[Calibration],
    stop_mask: torch.Tensor, batch_size: int = 8, first_position: int = 1,
) -> tuple[dict[str, dict[str, torch.Tensor]], pd.DataFrame]:
    """Score the four choices on one domain's test texts tokens [B, L] (L > the calibration
    position), over positions first_position..n_score-1.

    Returns per choice {'r', 'fvu', 'bias'} each [B, J], and a table with one row per
    (choice, text): text, choice, calibration, cluster, density_test, density_calibration.
    """
    n_cal = parts.calibration_position
    if tokens.shape[-1] <= n_cal:
        raise ValueError(f"test texts have {tokens.shape[-1]} tokens; clustering needs more than the calibration position {n_cal}")
    out = {c: {"r": [], "fvu": [], "bias": []} for c in CHOICES}
    rows, seen = [], 0
    with torch.inference_mode():
        for batch in tokens.split(batch_size):
            batch = batch.to(w.device)
            own = own_log_denominators(w, parts, batch)  # [B, h, L]
            assigned = clusters.assign(own[:, :, n_cal])
            x = batch[:, :n_score]
            acts = forward.run(w, x)
            true = forward.heads_to_neurons(w, acts.z, acts.ln2_scale, list(parts.heads), neurons)
            own_ln2 = acts.ln2_scale[:, first_position:, 0].median(-1).values  # [B]
            sums = kernel_sums(parts, x)
            density = stop_word_density(x[:, first_position:], stop_mask)
            cluster_D = torch.stack([cluster_cals[a].log_D for a in assigned])  # [B, h]
            cluster_ln2 = torch.tensor([cluster_cals[a].ln2 for a in assigned])
            approx = {
                "default": approximate(parts, sums, default.log_D, default.ln2),
                "domain": approximate(parts, sums, domain.log_D, domain.ln2),
                "cluster": approximate(parts, sums, cluster_D[:, :, None].expand(-1, -1, x.shape[-1]), cluster_ln2),
                "oracle": approximate(parts, sums, own, own_ln2),
            }
            t = true[:, first_position:]
            for choice, a in approx.items():
                a = a[:, first_position:]
                out[choice]["r"].append(pearson_r(t, a, dim=1).cpu())
                out[choice]["fvu"].append(fvu(t, a, dim=1).cpu())
                out[choice]["bias"].append(bias(t, a, dim=1).cpu())
            for b in range(x.shape[0]):
                cal = {"default": default, "domain": domain, "cluster": cluster_cals[assigned[b]]}
                for choice in CHOICES:
                    c = cal.get(choice)
                    rows.append({"text": seen + b, "choice": choice, "calibration": c.name if c else "own",
                                 "cluster": int(assigned[b]), "density_test": float(density[b]),
                                 "density_calibration": c.density if c else float(density[b])})
            seen += x.shape[0]
    return {c: {k: torch.cat(v) for k, v in d.items()} for c, d in out.items()}, pd.DataFrame(rows)


#: The columns of :func:`by_text_frame` (chapter 09's by_text.csv).
BY_TEXT_COLUMNS = {
    "domain": "test domain",
    "choice": "calibration choice",
    "text": "index of the test text within its domain",
    "doc_id": "its document id in the domain's corpus",
    "calibration": "the calibration text used ('own' for the oracle)",
    "cluster": "the cluster the text is assigned to by its own log D_h at the calibration position",
    "density_test": "the test text's stop-word density over the scored positions",
    "density_calibration": "the calibration text's stop-word density (the test text's own for the oracle)",
    "density_difference": "density_test - density_calibration",
    "median_r": "median Pearson r over neurons",
    "median_fvu": "median FVU over neurons",
    "median_bias": "median bias over neurons",
}


def by_text_frame(domain: str, scores: dict[str, dict[str, torch.Tensor]], rows: pd.DataFrame, doc_ids: list) -> pd.DataFrame:
    """:func:`score_domain`'s rows with each (choice, text)'s medians over neurons
    (scores: per choice {'r', 'fvu', 'bias'} each [B, J]):
    domain, choice, text, doc_id, calibration, cluster, density_test,
    density_calibration, density_difference, median_r, median_fvu, median_bias."""
    med = {(c, k): s[k].nanmedian(-1).values for c, s in scores.items() for k in ("r", "fvu", "bias")}
    df = rows.assign(domain=domain, doc_id=[doc_ids[t] for t in rows["text"]])
    df["density_difference"] = df["density_test"] - df["density_calibration"]
    for k in ("r", "fvu", "bias"):
        df[f"median_{k}"] = [float(med[(c, k)][t]) for c, t in zip(df["choice"], df["text"])]
    cols = ["domain", "choice", "text", "doc_id", "calibration", "cluster", "density_test", "density_calibration",
            "density_difference", "median_r", "median_fvu", "median_bias"]
    return df[cols]


#: The columns of :func:`summary_rows` (chapter 09's by_domain_and_choice.csv).
SUMMARY_COLUMNS = {
    "domain": "test domain",
    "choice": "calibration choice: default, domain, cluster or oracle",
    "median_r": "median Pearson r over (neuron, text) pairs, positions >= 1",
    "median_fvu": "median FVU over the same pairs",
    "median_bias": "median over the same pairs of mean(approx - true) / std(true) over positions",
    "n_texts": "test texts of the domain",
    "n_neurons": "neurons scored",
}


def summary_rows(domain: str, scores: dict[str, dict[str, torch.Tensor]]) -> list[dict]:
    """Per choice of scores (per choice {'r', 'fvu', 'bias'} each [B, J]): domain, choice,
    median_r, median_fvu, median_bias (medians over every (neuron, text) pair), n_texts, n_neurons."""
    return [{"domain": domain, "choice": c, "median_r": float(s["r"].nanmedian()), "median_fvu": float(s["fvu"].nanmedian()),
             "median_bias": float(s["bias"].nanmedian()), "n_texts": s["r"].shape[0], "n_neurons": s["r"].shape[1]}
            for c, s in scores.items()]


# ---------------------------------------------------------------- texts


def domain_texts(corpus_name: str, tokenizer, n_test: int, n_other: int, n_tokens: int, seed: int,
                 exclude: int | None = None):
    """One domain's texts, all distinct documents: (test texts, other texts), two
    corpus.TokenBatch of n_test and n_other rows of n_tokens tokens; ``exclude`` is a
    document id kept out of both (the book's calibration text when drawn from this corpus)."""
    from ctxneurons.io.corpus import TokenBatch, select_token_batch

    batch = select_token_batch(corpus_name, tokenizer, n_test + n_other + (exclude is not None), n_tokens, seed=seed)
    keep = [i for i, d in enumerate(batch.doc_ids) if d != exclude][: n_test + n_other]

    def part(rows):
        return TokenBatch(batch.tokens[rows], [batch.doc_ids[i] for i in rows], [batch.texts[i] for i in rows], batch.source, batch.revision)

    return part(keep[:n_test]), part(keep[n_test:])


#: The columns of :func:`density_signature` (chapter 09's bias_vs_density.csv).
SIGNATURE_COLUMNS = {
    "choice": "calibration choice (the oracle left out)",
    "slope": "least-squares slope of median bias on the stop-word density difference (test - calibration)",
    "correlation": "Pearson correlation of the two over (text, domain)",
    "n": "points",
}


def bias_slope(x: np.ndarray, y: np.ndarray) -> float:
    """The least-squares slope of y [P] (median bias) on x [P] (density difference); NaN
    unless both vary over at least two points."""
    if not (len(x) > 1 and x.std() > 0 and y.std() > 0):
        return float("nan")
    return float(np.polyfit(x, y, 1)[0])


def density_signature(by_text: pd.DataFrame) -> pd.DataFrame:
    """Per calibration choice but the oracle: the least-squares slope of median bias on the
    stop-word density difference (:func:`bias_slope`), their correlation and the number of
    points, from the ``by_text`` table (:func:`by_text_frame`): choice, slope, correlation, n."""
    rows = []
    for choice in [c for c in CHOICES if c != "oracle"]:
        d = by_text[(by_text["choice"] == choice)].dropna(subset=["median_bias"])
        x, y = d["density_difference"].to_numpy(), d["median_bias"].to_numpy()
        slope = bias_slope(x, y)
        rows.append({"choice": choice, "slope": slope,
                     "correlation": float(np.corrcoef(x, y)[0, 1]) if np.isfinite(slope) else float("nan"), "n": len(x)})
    return pd.DataFrame(rows)
