"""The rule that picks the circuit's heads (issue 23): a slowly decaying kernel, not a sink,
and a stable denominator. Ground truth first: on the toy it keeps the planted slow heads and
rejects the planted distractors; on the negative control it keeps nothing and says the
premise fails; on random tiny models of every supported architecture it runs."""

from __future__ import annotations

import pytest
import torch

from ctxneurons import toy
from ctxneurons.io.model import load_layer0
from ctxneurons.method import denominators, kernels, stable_heads
from ctxneurons.method.weights import Layer0

from test_architectures import write_gpt2, write_gpt_neo

torch.set_grad_enabled(False)


def _row(weights: torch.Tensor) -> torch.Tensor:
    return weights / weights.sum(-1, keepdim=True)


def test_kinds_include_first_token_and_a_bos_leak_leaves_a_local_head_local():
    n = 500
    dist = torch.arange(n, -1, -1, dtype=torch.float64)
    local_leak = _row((-dist / 1.5).exp())
    local_leak = 0.97 * local_leak + 0.03 * (dist == n).double()  # GPT-2's head 4: a few % on BOS
    rising = _row((-(n - dist) / 150).exp())  # leans to the start
    sink = 0.11 * (dist == n).double() + 0.89 * _row(torch.cat([torch.zeros(1), rising[1:]]))  # GPT-2's head 5
    slow = _row((-dist / 40).exp())
    uniform = _row(torch.ones(n + 1))
    classes = kernels.classify_heads(torch.stack([local_leak, sink, slow, uniform]))
    assert [c.kind for c in classes] == ["local", "first-token", "slow", "uniform"]
    # Over the whole kernel the leak alone puts the mean distance at ~15, which filed it slow.
    assert kernels.mean_distance(local_leak) > 10 > 2 > classes[0].mean_distance
    assert classes[0].weight_on_first == pytest.approx(0.03)
    assert kernels.is_first_token(torch.stack([sink, uniform, local_leak])).tolist() == [True, False, False]
    assert kernels.most_local_head(classes) == 0


def test_iid_prediction_holds_a_fixed_bos_key_fixed():
    """A kernel on BOS alone has a constant denominator when BOS is fixed; drawn like the other
    keys it would be predicted the full spread of one token's exp(score)."""
    g = torch.Generator().manual_seed(0)
    y = torch.rand(2, 50, generator=g, dtype=torch.float64) * 3 + 0.1  # [H, V]
    p = torch.full((50,), 1 / 50, dtype=torch.float64)
    row = torch.tensor([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    mean_fixed, var_fixed, _ = denominators.iid_moments(y, p, row, first_token=7)
    mean_drawn, var_drawn, sum_sq = denominators.iid_moments(y, p, row)
    assert var_fixed[0] == 0 and mean_fixed[0] == y[0, 7]
    assert var_drawn[0] > 0 and sum_sq[0] == 1
    # The uniform row: three random keys of weight 1/4 and BOS fixed at 1/4.
    mean_y, var_y = y[1] @ p, (y[1] ** 2) @ p - (y[1] @ p) ** 2
    assert float(mean_fixed[1]) == pytest.approx(float(0.75 * mean_y + 0.25 * y[1, 7]))
    assert float(var_fixed[1]) == pytest.approx(float(var_y * 3 / 16))


def _layer0(W_Q: torch.Tensor, W_K: torch.Tensor, V: int = 300, n_ctx: int = 16) -> Layer0:
    """A layer 0 with isotropic, centred token embeddings of GPT-2's typical norm and the given
    query and key weights [H, d, e]; everything else zero."""
    g = torch.Generator().manual_seed(1)
    H, d, e = W_Q.shape
    W_E = torch.randn(V, d, generator=g)
    W_E = W_E - W_E.mean(-1, keepdim=True)
    W_E = 3.5 * W_E / W_E.norm(dim=-1, keepdim=True)
    W_pos = torch.randn(n_ctx, d, generator=g) * 0.1
    W_pos = W_pos - W_pos.mean(-1, keepdim=True)
    z = torch.zeros
    return Layer0(W_E=W_E, W_pos=W_pos, W_Q=W_Q, b_Q=z(H, e), W_K=W_K, b_K=z(H, e), W_V=z(H, d, e), b_V=z(H, e),
                  W_O=z(H, e, d), b_O=z(d), W_in=z(d, 4), b_in=z(4))


def test_duplicate_token_score_ranks_an_identity_qk_circuit_above_a_random_one():
    d = e = 32
    g = torch.Generator().manual_seed(2)
    scale = 1.5  # tr(W_Q W_K^T) / sqrt(e) = 12.7, GPT-2 head 1's ~13
    W_Q = torch.stack([scale * torch.eye(d), scale * torch.randn(d, e, generator=g) / d**0.5])
    W_K = torch.stack([scale * torch.eye(d), scale * torch.randn(d, e, generator=g) / d**0.5])
    w = _layer0(W_Q, W_K)
    dep = stable_heads.content_dependence(w, torch.arange(200), n=5)
    print(f"\nduplicate-token score {dep.duplicate_token.tolist()}, spread {dep.spread.tolist()}")
    assert dep.duplicate_token[0] > stable_heads.DUPLICATE_TOKEN_MIN > dep.duplicate_token[1]
    assert dep.duplicate_token[0] > 5 * dep.spread[0]  # same token far above the spread between others
    # For isotropic tokens of post-LN norm sqrt(d) the score is tr(W_Q W_K^T) / sqrt(e), less
    # what the cross terms between tokens average to.
    assert float(dep.duplicate_token[0]) == pytest.approx(float(torch.trace(W_Q[0] @ W_K[0].T)) / e**0.5, rel=0.1)


def test_choose_keeps_slow_heads_with_stable_denominators_only():
    kinds = ["slow", "slow", "local", "first-token", "uniform", "slow"]
    cv = torch.tensor([0.1, 0.5, 0.01, 0.01, 0.01, stable_heads.CV_STABLE_MAX])
    assert stable_heads.choose(kinds, cv) == [0, 5]
    assert stable_heads.choose(kinds, torch.full((6,), float("nan"))) == []


def _toy_tokens(w, n_texts: int = 24, n_tokens: int = 513) -> torch.Tensor:
    enc = lambda t: [w.tokenizer.bos_token_id] + w.tokenizer.encode(t, add_special_tokens=False)[: n_tokens - 1]  # noqa: E731
    return torch.tensor([enc(t) for t in toy.documents(n_texts, seed=7)])


@pytest.fixture(scope="module")
def toy_pick(toy_dir):
    w = load_layer0(toy_dir, device="cpu")
    return stable_heads.pick_heads(w, _toy_tokens(w), w.token_id(" the"))


@pytest.fixture(scope="module")
def control_pick(tmp_path_factory):
    w = load_layer0(toy.ensure_model(tmp_path_factory.mktemp("control-cache"), control=True), device="cpu")
    return stable_heads.pick_heads(w, _toy_tokens(w), w.token_id(" the"))


def test_on_the_toy_the_rule_keeps_the_planted_slow_heads_and_rejects_the_distractors(toy_pick, truth):
    t = toy_pick.table
    print("\n" + t.drop(columns=["reason"]).round(3).to_string())
    assert dict(zip(t["head"], t["kind"])) == {h: k for k, hs in truth["kernel_kinds"].items() for h in hs}
    assert toy_pick.heads == truth["heads"]["slow"] == list(toy.SLOW_HEADS)
    assert toy_pick.premise_holds and toy_pick.require() == list(toy.SLOW_HEADS)
    distractors = truth["distractors"]
    dup, sink = distractors["duplicate_token"], distractors["first_token"]
    assert t.loc[dup, "kind"] == "slow" and t.loc[dup, "duplicate_token"] and not t.loc[dup, "stable"]
    assert t.loc[sink, "kind"] == "first-token" and t.loc[sink, "stable"]  # stable, but a sink
    assert [int(h) for h in t.loc[t["duplicate_token"], "head"]] == [dup]
    assert all(t.loc[h, "kind"] == "uniform" and not t.loc[h, "picked"] for h in truth["heads"]["uniform"])
    # The i.i.d. prediction sees what was measured for heads whose mass is near the query:
    # the slow heads' CVs far below the duplicate-token head's. (A sink's is meaningless: its
    # content scores at n carry its positional score there, hundreds of logits.)
    slow = list(toy.SLOW_HEADS)
    assert t.loc[slow, "cv_iid"].max() < t.loc[dup, "cv_iid"] / 3
    assert t.loc[slow, "cv_measured"].max() < t.loc[dup, "cv_measured"] / 3
    h = toy_pick.headline()
    assert h["stable_heads"] == slow and h["duplicate_token_heads"] == [dup]
    assert set(h["head_kinds"]) == set(h["denominator_cv_by_head"]) == {str(i) for i in range(12)}


def test_on_the_negative_control_the_rule_finds_nothing_and_says_so(control_pick):
    t = control_pick.table
    print("\n" + t.drop(columns=["reason"]).round(3).to_string())
    assert control_pick.heads == [] and not control_pick.premise_holds
    assert "premise fails" in control_pick.message
    with pytest.raises(stable_heads.PremiseFails, match="premise fails"):
        control_pick.require()
    assert control_pick.headline()["stable_heads"] == []


@pytest.mark.parametrize("writer", [write_gpt2, write_gpt_neo], ids=["gpt2", "gpt_neo"])
def test_runs_on_random_tiny_models_of_every_architecture(writer, tmp_path):
    w = load_layer0(writer(tmp_path / "model"), device="cpu")
    tokens = torch.randint(0, 50256, (6, 96), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 50256
    pick = stable_heads.pick_heads(w, tokens, w.token_id(" the"))
    t = pick.table
    assert set(pick.heads) <= set(range(w.n_heads)) and pick.heads == sorted(pick.heads)
    assert len(t) == w.n_heads and set(t["kind"]) <= set(kernels.HEAD_KINDS)
    assert t["picked"].tolist() == [h in pick.heads for h in range(w.n_heads)]
    assert t[["duplicate_token_score", "content_spread", "cv_measured", "cv_iid"]].notna().all().all()
    assert pick.position == kernels.resolve_query_position(-1, w.n_ctx, 96)


def test_across_models_reports_no_circuit_for_the_control(tmp_path):
    """Chapter 06's row for the negative control, loaded by name like any model: the rule
    picks nothing, so no circuit is built and no neuron is reported (it used to borrow the
    paper's heads and find dozens)."""
    from ctxneurons.book import experiment
    from ctxneurons.studies import across

    params = experiment.validate({"model": "toy-control", "corpus": "toy", "n_texts": 6, "n_tokens": 512, "device": "cpu",
                                  "seed": 0, "heads": [0, 2, 6, 8, 9, 10], "output_dir": str(tmp_path)})
    run = experiment.open_run("across_models", params)
    s = across.study(run, [0, 2, 6, 8, 9, 10], max_neurons=5)
    r = s.row
    assert r["stable_heads"] == r["circuit_heads"] == [] and not r["premise_holds"] and not r["agrees_with_reference"]
    assert r["n_found"] == 0 and r["n_evaluated"] == 0 and bool((s.top == float("-inf")).all())
    assert len(s.heads) == 12 and not s.heads["picked"].any()
    summary = across.summary_rows(across.table([r]))[0]
    assert summary["stable_heads"] == [] and summary["premise_holds"] is False and summary["median_r"] is None


def test_heads_auto_is_the_rule_and_never_a_fixed_list():
    import pandas as pd

    calls = []

    def pick_of(heads):
        def pick():
            calls.append(heads)
            return stable_heads.HeadPick(heads=heads, table=pd.DataFrame(), position=10, n_texts=2, model="m")
        return pick

    assert stable_heads.resolve([0, 2], pick_of([5])) == (0, 2) and calls == []  # a list is taken as given
    assert stable_heads.resolve("auto", pick_of([1, 3])) == (1, 3)
    with pytest.raises(stable_heads.PremiseFails, match="premise fails"):
        stable_heads.resolve("auto", pick_of([]))
    with pytest.raises(ValueError, match="auto"):
        stable_heads.resolve("slow", pick_of([1]))


def test_the_message_lists_the_heads_as_a_reader_writes_them():
    import pandas as pd

    pick = stable_heads.HeadPick(heads=[0, 2, 6], table=pd.DataFrame(), position=10, n_texts=2, model="m")
    assert pick.message.startswith("m: heads 0, 2, 6 have a slowly decaying kernel")  # not Python's [0, 2, 6]


def test_the_pick_is_shown_against_a_reference_list(toy_pick):
    t = stable_heads.with_reference(toy_pick, [0, 1, 2])
    assert list(t.columns).index("in_reference") == list(t.columns).index("picked") + 1
    assert t["in_reference"].tolist() == [h in (0, 1, 2) for h in range(12)]
    agreement = stable_heads.paper_agreement(toy_pick, [0, 1, 2])
    assert agreement == {"agrees": False, "both": [0, 2], "only_rule": [6, 8, 9, 10], "only_reference": [1]}
    assert set(stable_heads.TABLE_COLUMNS) | set(stable_heads.REFERENCE_COLUMN) == set(t.columns)


@pytest.mark.parametrize("model, premise", [("toy", True), ("toy-control", False)])
def test_chapter_01_headline_holds_the_rule_on_the_toy_and_its_control(model, premise, toy_dir, tmp_path):
    """The keys a check outside the project reads from chapter 01's summary.json, on the planted
    answer: the toy's six slow heads, its duplicate-token head; the control's none."""
    from ctxneurons.book import experiment
    from ctxneurons.chapters import ch01_positional_kernels

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTXN_CACHE", str(toy_dir.parent))  # the session's toy (and its control, built beside it)
        params = experiment.validate({"model": model, "corpus": "toy", "n_texts": 8, "n_tokens": 512, "device": "cpu", "seed": 0,
                                      "heads": [0, 2, 6, 8, 9, 10], "query_position": -1, "output_dir": str(tmp_path)})
        r = ch01_positional_kernels.compute(experiment.open_run("positional_kernels", params))
    h, truth = r.headline, toy.ground_truth(toy.ensure_model(toy_dir.parent, control=model == "toy-control"))
    assert h["head_kinds"] == {str(k): v for k, v in enumerate(truth["kernel_kind"])}
    assert h["duplicate_token_heads"] == [truth["distractors"]["duplicate_token"]]
    assert set(h["denominator_cv_by_head"]) == {str(k) for k in range(12)}
    assert h["stable_heads"] == truth["heads"]["slow"] and h["stable_heads_premise_holds"] is premise
    assert h["stable_heads_vs_circuit_heads"]["agrees"] is premise
    assert h["heads_first_token"] == [truth["distractors"]["first_token"]]
    assert r.tables["stable_heads"].frame["in_reference"].sum() == 6


@pytest.mark.parametrize("model, expected", [("toy", (0, 2, 6, 8, 9, 10)), ("toy-control", None)])
def test_a_run_with_heads_auto_builds_its_circuit_from_the_rule_or_says_the_premise_fails(model, expected, tmp_path):
    """heads='auto' through a notebook's entry point: the toy's circuit is its six planted
    slow heads; the control's run refuses to build a circuit at all."""
    from ctxneurons.book import experiment

    run = experiment.start("contextual_circuit", {
        "model": model, "n_texts": 8, "seed": 0, "device": "cpu", "output_dir": str(tmp_path), "heads": "auto"})
    assert "toy" in run.model_label and run.corpus == "toy"
    if expected is None:
        with pytest.raises(stable_heads.PremiseFails, match="premise fails"):
            run.heads
    else:
        assert run.heads == expected and run.circuit().heads == expected


def test_a_toy_given_by_its_folder_is_the_toy_edition(toy_dir):
    """A toy copied or given by path reads the toy's corpus, not OpenWebText."""
    from ctxneurons.io.model import is_toy

    assert is_toy(toy_dir) and is_toy("toy-control") and not is_toy(toy_dir.parent)
