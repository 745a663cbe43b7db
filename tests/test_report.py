import pandas as pd

from ctxneurons.book import report


def _summary(notebook, **headline):
    return {"notebook": notebook, "model": "toy (planted-circuit GPT-2, offline)", "headline": headline,
            "parameters": {"n_texts": 4, "seed": 0, "heads": [0, 2]}, "calibration_text": {"name": "cal.txt", "sha256": "ab" * 32}}


def test_scorecard_reads_the_summaries_and_marks_missing_chapters():
    card = report.scorecard({
        "tv_distance": _summary("tv_distance", median_tv=0.0312),
        "contextual_circuit": _summary("contextual_circuit", median_r=0.91, median_fvu=0.2),
        "denominator_stability": _summary("denominator_stability", cv_by_head={"0": 0.03, "2": 0.05, "4": 0.4}, local_head_cv=0.4),
    })
    assert isinstance(card, pd.DataFrame) and list(card.columns) == ["quantity", "paper", "this build", "interval", "from",
                                                                     "on the toy edition, this comparison shows"]
    by_q = card.set_index("quantity")["this build"]
    assert by_q["median TV, true vs decomposed pattern (circuit heads)"] == "0.0312"
    assert by_q["median Pearson r, approximate vs true (neuron, text)"] == "0.91"
    assert set(card.loc[card["this build"] == "not run", "from"]) == {"positional_kernels", "context_neurons", "head_attribution",
                                                                      "core_tokens", "calibration_choice", "across_models",
                                                                      "deeper_layers"}
    assert by_q["denominator spread across texts at n_ctx/2 (largest CV over circuit heads)"] == "0.05"  # head 4 is not in the circuit
    assert "tv_distance · model toy" in card.set_index("quantity").loc["median TV, true vs decomposed pattern (circuit heads)", "from"]


def test_scorecard_sets_the_stable_heads_rule_and_each_model_against_the_paper():
    models = [{"name": "toy", "stable_heads": [0, 2, 6, 8, 9, 10], "premise_holds": True, "median_r": 0.98, "median_fvu": 0.04,
               "n_found": 43},
              {"name": "toy-control", "stable_heads": [], "premise_holds": False, "median_r": None, "median_fvu": None, "n_found": 0}]
    card = report.scorecard({
        "positional_kernels": _summary("positional_kernels", stable_heads=[]),
        "across_models": _summary("across_models", models=models),
        "deeper_layers": _summary("deeper_layers", stable_heads_by_layer={"0": [0, 2], "1": [3]}, layer0_book_heads_stable=[0, 2],
                                  toy_planted_stable_heads_by_layer={"0": [0, 2], "1": [3]}),
    }, toy=True).set_index("quantity")
    by_q = card["this build"]
    assert by_q["heads the stable-heads rule picks (slow kernel, not a sink, stable denominator)"] == "none: the premise fails"
    assert by_q["across models: heads the stable-heads rule picks, per model"] == "toy: 0, 2, 6, 8, 9, 10; toy-control: none: the premise fails"
    assert "toy-control: no circuit" in by_q["  … median r / median FVU of each model's circuit (neurons of the model-scaled rule)"]
    assert by_q["deeper layers: stable heads outside layer 0 (count; by the layer-0 rule on empirical kernels)"] == "1"
    assert by_q["  … toy: planted stable heads by layer, found by the rule"] == "all found"
    assert "distractor" in card.loc["heads the stable-heads rule picks (slow kernel, not a sink, stable denominator)",
                                     "on the toy edition, this comparison shows"]


def test_scorecard_has_one_row_per_quantity_and_shows_a_missing_number_as_a_dash():
    card = report.scorecard({"positional_kernels": _summary("positional_kernels", stable_heads=[0, 2]),
                             "tv_distance": _summary("tv_distance", median_tv=None),
                             "contextual_circuit": _summary("contextual_circuit", median_r=float("nan"), median_fvu=0.1)})
    assert not card["quantity"].duplicated().any()
    assert card["quantity"].str.startswith("heads the stable-heads rule picks").sum() == 1
    by_q = card.set_index("quantity")["this build"]
    assert by_q["median TV, true vs decomposed pattern (circuit heads)"] == "—"
    assert by_q["median Pearson r, approximate vs true (neuron, text)"] == "—"


def test_scorecard_counts_domains_where_the_domain_calibration_wins():
    rows = [{"domain": d, "choice": c, "median_r": 0.9, "median_fvu": f, "median_bias": 0.0}
            for d, fd, fdom in (("web", 0.10, 0.12), ("terse", 0.20, 0.11)) for c, f in (("default", fd), ("domain", fdom))]
    card = report.scorecard({"calibration_choice": _summary("calibration_choice", by_domain_and_choice=rows,
                                                            bias_density_slope={"default": -0.25})})
    by_q = card.set_index("quantity")["this build"]
    assert by_q["domains where a domain-matched calibration text beats the book's (median FVU)"] == "1 of 2 (terse)"
    assert by_q["bias against stop-word density difference, test − calibration (slope, book's calibration)"] == "-0.25"


def test_banner_flags_the_toy_fallback_and_escapes():
    toy = report.edition_banner({"model": "toy", "fallback": True, "corpus": "toy", "calibration": "<b>x</b>",
                                 "n_texts": "8", "device": "cpu"})
    assert "Offline edition: not GPT-2" in toy and "could not be reached" in toy
    assert "&lt;b&gt;x&lt;/b&gt;" in toy and "<b>x</b>" not in toy
    gpt2 = report.edition_banner({"model": "gpt2", "fallback": False, "corpus": "openwebtext", "calibration": "c",
                                  "n_texts": "1000", "device": "cuda"})
    assert "Offline" not in gpt2 and "openwebtext" in gpt2


def test_neuron_cards_escape_corpus_text():
    card = report.neuron_card_html(
        7, {"median r": 0.9}, [("<script>alert(1)</script>", 5.0)], [("<img src=x onerror=alert(1)>", -2.0)],
        [{"title": "doc <i>", "tokens": ["<script>", "ok"], "approx": [1.0, 0.0], "true": [0.5, 0.1]}])
    page = report.neuron_browser_html([card])
    assert "<script>alert" not in page and "<img src=x" not in page and "<i>" not in page
    assert "&lt;script&gt;" in page and 'data-neuron="7"' in page
    assert page.count("<script>") == 1  # only the search box's own script


def test_scorecard_shows_the_chapters_beyond_the_paper():
    card = report.scorecard({
        "head_attribution": _summary("head_attribution", top_head_share={"8": 0.25, "10": 0.5, "0": 0.25}, consistency_median=0.75,
                                     per_head_median_r={"0": 0.98, "10": 0.99}, toy_top_head_planted_share=1.0),
        "core_tokens": _summary("core_tokens", homogeneity_by_segment=[0.35, 0.6, 1.0], weights_vs_activation_core_overlap_median=0.2,
                                toy_homogeneity_by_segment=None),
    }).set_index("quantity")["this build"]
    assert card["heads leading the found neurons at their peaks (share of neurons)"] == "head 10: 50%, head 8: 25%, head 0: 25%"
    assert card["  … median r per circuit head, its true contribution vs its part of the approximation"] == "head 10: 0.990, head 0: 0.980"
    assert card["core-token homogeneity by activation segment, lowest → highest"] == "0.35 → 0.60 → 1.00"
    assert card["  … toy: homogeneity by segment against the planted topics"] == "—"


def test_neuron_cards_show_head_shares_and_escaped_sections():
    heads = pd.DataFrame({"neuron": [7, 7, 7], "head": [0, 2, 5], "weight_share": [0.2, 0.8, float("nan")]})
    lead = pd.DataFrame({"neuron": [7], "lead_head": [2], "consistency": [0.75], "ablation_top_head": [2]})
    text = report.head_shares_html(heads, lead, 7)
    assert text.startswith("share of the contribution spread (weights): head 2 80%, head 0 20%") and "75%" in text
    assert report.head_shares_html(heads, lead, 8) == ""
    card = report.neuron_card_html(7, {}, [], [], [], sections=[("heads <b>", text), ("empty", "")])
    assert "heads &lt;b&gt;:" in card and "head 2 80%" in card and "empty" not in card


def test_scorecard_gives_intervals_from_the_tables_and_says_what_the_toy_can_show(tmp_path):
    (tmp_path / "contextual_circuit").mkdir()
    pd.DataFrame({"neuron": [1, 2] * 20, "text": [t for t in range(20) for _ in (0, 1)],
                  "r": [0.9 + 0.001 * t for t in range(20) for _ in (0, 1)], "fvu": 0.1}).to_csv(
        tmp_path / "contextual_circuit" / "scores.csv", index=False)
    summaries = {"contextual_circuit": _summary("contextual_circuit", median_r=0.9095, median_fvu=0.1),
                 "positional_kernels": _summary("positional_kernels", heads_slow=[0, 2, 6, 8, 9, 10], circuit_heads_all_slow=True)}
    card = report.scorecard(summaries, tmp_path).set_index("quantity")
    shown = card.loc["median Pearson r, approximate vs true (neuron, text)", "this build"]
    value, interval = shown.split(" [")
    lo, hi = map(float, interval.rstrip("]").split(", "))
    assert value == "0.9095" and 0.9 <= lo < 0.9095 < hi <= 0.919
    assert "true by construction" in card.loc["slowly decaying heads", "on the toy edition, this comparison shows"]
    gpt2 = report.scorecard({k: {**v, "model": "gpt2"} for k, v in summaries.items()}, tmp_path)
    assert "on the toy edition, this comparison shows" not in gpt2.columns


def test_front_page_headline_reads_the_numbers_and_escapes_them():
    summaries = {"contextual_circuit": {**_summary("contextual_circuit", median_r=0.9123, median_fvu=0.2), "model": "<b>m</b>"},
                 "context_neurons": _summary("context_neurons", n_found=17)}
    box = report.headline_html(summaries, info={"model": "toy"})
    assert "0.9123" in box and "0.9485" in box and "17" in box and "not run" in box
    assert "&lt;b&gt;m&lt;/b&gt;" in box and "<b>m</b>" not in box
    assert "not comparable" in box and "scorecard" in box
    assert "not comparable" not in report.headline_html(summaries, info={"model": "gpt2"})
    assert "No chapter has written" in report.headline_html({}, info={"model": "gpt2"})


def test_neuron_card_is_linkable_links_try_a_neuron_and_compares_like_with_like():
    card = report.neuron_card_html(
        7, {"top[j]": 5.0}, [("a", 1.0)], [("b", -1.0)],
        [{"title": "text 0", "tokens": ["x", "y"], "approx": [1.0, 0.5], "true": [2.0, 0.0], "first_position": 40}],
        try_href="try_a_neuron.html#neuron-7")
    assert 'id="neuron-7"' in card and 'href="#neuron-7"' in card and 'href="try_a_neuron.html#neuron-7"' in card
    # One legend for the pair, one scale (the truth's 2.0 is full red, the approximation's 1.0 half).
    assert card.count('class="ctxn-heatmap-legend"') == 1 and 'class="ctxn-p20"' in card and 'class="ctxn-p10"' in card
    assert "circuit&#x27;s approximation" in card and "true contribution of the circuit heads" in card and "position 40: " in card
    page = report.neuron_browser_html([card], hint="<zork>")
    assert "e.g. &lt;zork&gt;" in page and "neuron-' + m[1]" in page


def test_a_chapter_closes_with_its_own_rows_of_the_scorecard(tmp_path):
    import json

    for nb, summary in {"contextual_circuit": _summary("contextual_circuit", median_r=0.91, median_fvu=0.2),
                        "tv_distance": _summary("tv_distance", median_tv=0.03)}.items():
        (tmp_path / nb).mkdir()
        (tmp_path / nb / "summary.json").write_text(json.dumps(summary))
    table = report.chapter_comparison_html("contextual_circuit", tmp_path)
    assert "median Pearson r" in table and "0.9485" in table and "0.91" in table and "median TV" not in table
    assert 'class="dataframe table ctxn-comparison"' in table and "on the toy edition" in table
    assert "no row" in report.chapter_comparison_html("no_such_chapter", tmp_path)


def test_batch_page_shows_no_path_of_the_build_machine(tmp_path):
    from ctxneurons.book.experiment import project_root

    page = report.batch_html(tmp_path / "nothing")
    assert str(tmp_path) not in page and "<code>.../nothing/</code>" in page
    assert report.shown_path(project_root() / "runs") == "runs/"


def test_scorecard_page_puts_provenance_and_the_toy_note_under_each_row():
    card = report.scorecard({"tv_distance": _summary("tv_distance", median_tv="<b>0.03</b>")})
    page = report.scorecard_html(card)
    assert page.count('<tr class="ctxn-row">') == len(card) == page.count('<tr class="ctxn-detail">')
    assert "&lt;b&gt;0.03&lt;/b&gt;" in page and "<b>0.03" not in page
    assert "on the toy edition: Built to be close" in page and "from: tv_distance · model toy" in page


def test_batch_page_names_a_runs_settings_without_the_machines_paths():
    """summary.csv keeps each run's CTXN_* settings with their values; the page shows which
    settings reached the run, never a path of the machine that ran it."""
    assert report._setting_names('{"CTXN_OUTPUT_DIR": "/tmp/x/outputs", "CTXN_DEVICE": "cpu"}') == "CTXN_DEVICE, CTXN_OUTPUT_DIR"
    assert report._setting_names("{}") == "—" and report._setting_names(float("nan")) == "—"
