"""Chapter 08, core tokens and their categories (after Pichat et al. 2025): each found
neuron's core tokens from the weights and from activations, their overlap, their
categories and the homogeneity of each activation segment (:mod:`ctxneurons.studies.core_tokens`).
On the toy, the planted topics are a second labelling beside the clustering.
"""

from __future__ import annotations

from ctxneurons.chapters import Result, Table, needs_circuit
from ctxneurons.io.corpus import iter_batches
from ctxneurons.method import evaluation, neurons
from ctxneurons.studies import core_tokens
from ctxneurons.toy import truth as planted_truth

N_TOP = 10  # the highest activation core tokens checked against a planted neuron's topic


@needs_circuit
def compute(run) -> Result:
    """Chapter 08 on ``run`` (an :class:`~ctxneurons.book.experiment.Run` with the
    chapter's parameters): tables core_overlap, core_tokens, homogeneity, categories;
    extra holds the neurons ``found`` [J] and ``notes`` / ``toy_notes`` for the narration."""
    p, w = run.params, run.w
    k, min_count, cut = p["n_core_tokens"], p["min_token_count"], p["cluster_cut"]
    c = run.circuit()
    d = neurons.discover(w, c, p["threshold"], p["max_neurons"])
    glitch, found = d.glitch, d.found
    notes = [d.message("describing")]

    batches = iter_batches(run.texts.tokens, evaluation.BATCH_SIZE)
    sums, counts = core_tokens.mean_preactivation_by_token(w, batches, found, evaluation.FIRST_POSITION)
    act_ids, act_means, eligible = core_tokens.activation_core_tokens(sums, counts, glitch, min_count, k)
    weight_ids, weight_values = core_tokens.weight_core_tokens(c.contribution[:, found], glitch, k)
    k_act = act_ids.shape[1]
    weight_ids_eligible, _ = core_tokens.weight_core_tokens(c.contribution[:, found], glitch | ~eligible, k_act)
    seen = (counts > 0) & ~glitch.to(counts.device)
    n_seen, n_eligible = int(seen.sum()), int(eligible.sum())
    n_too_rare, n_unseen = n_seen - n_eligible, int((~seen).sum()) - int(glitch.sum())
    notes.append(f"{n_seen} distinct non-glitch tokens occur in the {len(run.texts)} test texts (positions >= {evaluation.FIRST_POSITION}); "
                 f"{n_too_rare} of them occur fewer than {min_count} times and are left out of the activation core tokens, "
                 f"{n_eligible} are eligible; {n_unseen} non-glitch tokens of the vocabulary never occur.")
    if k_act < k:
        notes.append(f"Fewer eligible tokens than n_core_tokens = {k}: each activation core set holds all {k_act} eligible tokens.")
    n_segments = min(p["n_segments"], k_act)

    overlap_df = core_tokens.overlap_frame(found.tolist(), weight_ids, weight_ids_eligible, act_ids)
    truth = planted_truth.of_model(p["model"])
    planted = None if truth is None else planted_truth.planted_categories(truth, w.d_vocab)
    tokens_df, homogeneity_df, categories_df = core_tokens.describe(
        w.W_E, found.tolist(), {"activation": act_ids, "weights": weight_ids}, {"activation": act_means, "weights": weight_values},
        run.token_str, cut, n_segments, planted)

    toy_homogeneity, toy_ari, toy_notes = None, None, ["not the toy model: no planted answer to compare with"]
    if planted is not None:
        toy_homogeneity = core_tokens.mean_by_segment(homogeneity_df, "activation", "planted")
        toy_ari = float(categories_df.loc[categories_df["core_set"] == "activation", "adjusted_rand"].median())
        topic_of = planted_truth.neuron_topics(truth, single_topic=True)
        top = tokens_df[(tokens_df["core_set"] == "activation") & (tokens_df["rank"] <= N_TOP) & tokens_df["neuron"].isin(list(topic_of))]
        toy_notes = ["homogeneity by segment against the planted topics, lowest to highest: " + " → ".join(f"{h:.2f}" for h in toy_homogeneity),
                     f"median adjusted Rand index, clustering vs planted topics: {toy_ari:.3f}"]
        if len(top):
            share = float((top["planted_category"] == top["neuron"].map(topic_of)).mean())
            toy_notes.append(f"share of the {N_TOP} highest activation core tokens of single-topic planted neurons that are words "
                             f"of the neuron's topic: {share:.1%}")

    homogeneity = core_tokens.mean_by_segment(homogeneity_df, "activation", "clusters")
    headline = {
        "homogeneity_by_segment": homogeneity,
        "weights_vs_activation_core_overlap_median": float(overlap_df["jaccard"].median()),
        "weights_vs_activation_core_overlap_eligible_median": float(overlap_df["jaccard_eligible"].median()),
        "weights_homogeneity_by_segment": core_tokens.mean_by_segment(homogeneity_df, "weights", "clusters"),
        "n_core_tokens": k,
        "min_token_count": min_count,
        "n_tokens_seen": n_seen,
        "n_tokens_too_rare": n_too_rare,
        "cluster_cut": cut,
        "n_segments": n_segments,
        "n_neurons": len(found),
        "n_neurons_passing_threshold": d.n_passed,
        "toy_homogeneity_by_segment": toy_homogeneity,
        "toy_adjusted_rand_median": toy_ari,
    }
    tables = {
        "core_overlap": Table(overlap_df, core_tokens.OVERLAP_COLUMNS),
        "core_tokens": Table(tokens_df, core_tokens.TOKENS_COLUMNS),
        "homogeneity": Table(homogeneity_df, core_tokens.HOMOGENEITY_COLUMNS),
        "categories": Table(categories_df, core_tokens.CATEGORIES_COLUMNS),
    }
    return Result(tables=tables, headline=headline, extra={"found": found, "notes": notes, "toy_notes": toy_notes})
