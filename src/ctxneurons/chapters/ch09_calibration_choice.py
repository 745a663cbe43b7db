"""Chapter 09, which calibration text: the book's calibration, a domain's own, a cluster's
(candidates clustered by their denominators) and each text's own (the oracle), scored on
the test texts of several domains (:mod:`ctxneurons.studies.calibration`).
"""

from __future__ import annotations

import pandas as pd
import torch

from ctxneurons.book.experiment import ParameterError
from ctxneurons.chapters import Result, Table, needs_circuit
from ctxneurons.method import evaluation, neurons
from ctxneurons.studies import calibration

DOMAIN_SEED_STRIDE = 1000  # domain d draws its texts with seed + d x this, apart from the others
STOP_WORDS = "scikit-learn ENGLISH_STOP_WORDS (318 words)"


def _domains(run) -> dict[str, str]:
    """The run's domains, checked against n_candidates and n_texts (each domain needs two
    candidates and one test text)."""
    p = run.params
    domains = calibration.default_domains(p["model"], run.corpus) if p["domains"] == "auto" else p["domains"]
    if len(domains) * 2 > p["n_candidates"]:
        raise ParameterError(f"n_candidates={p['n_candidates']}: need at least 2 per domain ({len(domains)} domains)")
    if len(domains) > p["n_texts"]:
        raise ParameterError(f"n_texts={p['n_texts']}: need at least 1 test text per domain ({len(domains)} domains)")
    return domains


@needs_circuit
def compute(run) -> Result:
    """Chapter 09 on ``run`` (an :class:`~ctxneurons.book.experiment.Run` with the
    chapter's parameters): tables candidates, calibration_denominators,
    by_domain_and_choice, by_text, bias_vs_density; extra holds the ``clusters``' explained
    variance, ``medians`` (domain by choice), ``domains`` (a table: domain, corpus, revision, texts), ``denominators_by_role`` and ``notes`` /
    ``best_notes`` for the narration."""
    p, w = run.params, run.w
    domains = _domains(run)
    c = run.circuit()
    d = neurons.discover(w, c, p["threshold"], p["max_neurons"])
    found = d.found.to(w.device)
    with torch.inference_mode():
        parts = calibration.circuit_parts(w, c, found)
    stop_mask = calibration.stop_word_mask(run.token_str(range(w.d_vocab)))
    n_cal = c.calibration_position
    n_long = max(run.n_tokens, n_cal + 1)  # the cluster assignment reads each text up to the calibration position
    default = calibration.Calibration(
        run.calibration.name, c.log_denoms, c.ln2_scale,
        float(calibration.stop_word_density(run.calibration_tokens[None, 1:], stop_mask)))
    notes = [f"{d.message('scoring')} Book's calibration: {default.name}, stop-word density {default.density:.3f}."]

    # From each domain: an equal share of the test texts, its own calibration text, and an
    # equal share of the candidate pool.
    per_domain = p["n_candidates"] // len(domains)
    tests_per_domain = p["n_texts"] // len(domains)
    tests, domain_cals, candidates = {}, {}, []
    with torch.inference_mode():
        for i, (name, corpus_name) in enumerate(domains.items()):
            exclude = run.calibration_doc if corpus_name == run.corpus else None
            test, other = calibration.domain_texts(corpus_name, w.tokenizer, tests_per_domain, 1 + per_domain,
                                                   n_long, seed=p["seed"] + DOMAIN_SEED_STRIDE * i, exclude=exclude)
            tests[name] = test
            for k in range(len(other)):
                log_D, ln2 = calibration.calibration_of(w, parts, other.tokens[k].to(w.device))
                density = float(calibration.stop_word_density(other.tokens[k : k + 1, 1 : n_cal + 1], stop_mask))
                cal = calibration.Calibration(f"{name}#{other.doc_ids[k]}", log_D.cpu(), ln2, density)
                if k == 0:
                    domain_cals[name] = cal
                else:
                    candidates.append((name, other.doc_ids[k], cal))
    clusters = calibration.cluster_candidates(torch.stack([cal.log_D for *_, cal in candidates]), p["n_clusters"], p["seed"])
    cluster_cals = [candidates[i][2] for i in clusters.calibration]
    cand_df = calibration.candidates_frame(candidates, clusters)
    den_df = calibration.denominators_frame(
        c.heads, [("default", "", default)] + [("domain", n, cal) for n, cal in domain_cals.items()]
        + [("candidate", n, cal) for n, _, cal in candidates])

    by_text, summary = [], []
    for name, test in tests.items():
        scores, rows = calibration.score_domain(
            w, parts, found, test.tokens, run.n_tokens, default, domain_cals[name], clusters, cluster_cals,
            stop_mask, first_position=evaluation.FIRST_POSITION)
        by_text.append(calibration.by_text_frame(name, scores, rows, test.doc_ids))
        summary += calibration.summary_rows(name, scores)
        notes.append(f"{name}: {len(test)} texts scored")
    by_text_df, summary_df = pd.concat(by_text, ignore_index=True), pd.DataFrame(summary)
    signature = calibration.density_signature(by_text_df)

    fvu_table = summary_df.pivot(index="domain", columns="choice", values="median_fvu")
    best_notes = []
    for name, row in fvu_table.iterrows():
        best = row.drop("oracle").idxmin()
        best_notes.append(f"{name}: best calibration {best} (median FVU {row[best]:.4f}); domain vs default {row['domain']:.4f} vs "
                          f"{row['default']:.4f}; oracle {row['oracle']:.4f}"
                          + ("" if row["oracle"] <= row["default"] else " (here the oracle is worse than the default)"))

    headline = {
        "by_domain_and_choice": summary_df[["domain", "choice", "median_r", "median_fvu", "median_bias"]].to_dict("records"),
        "domains": domains,
        "domain_revisions": {name: test.revision for name, test in tests.items()},
        "n_neurons_evaluated": len(found),
        "n_neurons_passing_threshold": d.n_passed,
        "n_candidates": len(candidates),
        "n_clusters": p["n_clusters"],
        "first_position": evaluation.FIRST_POSITION,
        "stop_words": STOP_WORDS,
        "bias_density_slope": {row.choice: row.slope for row in signature.itertuples()},
    }
    tables = {
        "candidates": Table(cand_df, calibration.CANDIDATES_COLUMNS),
        "calibration_denominators": Table(den_df, calibration.DENOMINATORS_COLUMNS),
        "by_domain_and_choice": Table(summary_df, calibration.SUMMARY_COLUMNS),
        "by_text": Table(by_text_df, calibration.BY_TEXT_COLUMNS),
        "bias_vs_density": Table(signature, calibration.SIGNATURE_COLUMNS),
    }
    extra = {
        "domains": pd.DataFrame({"domain": list(domains), "corpus": list(domains.values()),
                                 "revision": [tests[n].revision or "—" for n in domains],
                                 "test texts scored": [len(tests[n]) for n in domains]}),
        "explained": tuple(clusters.explained), "notes": notes, "best_notes": best_notes,
        "denominators_by_role": den_df.pivot_table(index=["role", "domain"], columns="head", values="log_denom", aggfunc="mean"),
        "medians": summary_df.pivot(index="domain", columns="choice", values=["median_r", "median_fvu", "median_bias"])
                             .reindex(columns=list(calibration.CHOICES), level=1),
    }
    return Result(tables=tables, headline=headline, extra=extra)
