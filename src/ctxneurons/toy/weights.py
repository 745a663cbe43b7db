"""The toy's layer-0 weights, one function per planted part.

Geometry is GPT-2 Small's layer 0 (see :mod:`ctxneurons.toy`). Two random streams build
it: torch's, for directions, and numpy's, for scalars; each part draws from them in turn,
so the parts run in a fixed order (:func:`layer0_weights`), and every draw of the original
single function is kept, which keeps the weights bit for bit (tests/test_toy.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ctxneurons.toy.documents import CALIBRATION_TOPICS
from ctxneurons.toy.truth import CONTEXT_TOP_MIN, HEAD_KINDS, KERNEL_KIND, NOISE_TOP_CEILING, NOISE_TOPIC_READ, SLOW_HEADS
from ctxneurons.toy.vocabulary import N_CTX, N_TOPICS, PUNCTUATION, VOCAB_SEED, WORDS_PER_TOPIC, Vocabulary, vocabulary

D_MODEL, N_HEADS, D_HEAD, D_MLP = 768, 12, 64, 3072
TOKEN_NORM = 3.5  # median |W_E[t]| of ordinary tokens (GPT-2 Small's typical value)
NORM_SPREAD = 0.1  # sigma of log |W_E[t]|: GPT-2 Small's common tokens spread by ~+-20% around 3.5
POS_OVERLAP = 0.25  # share of |W_E[t]| in the positional subspace: mean |cos(W_E, W_pos)| ~ 0.04
GLITCH_NORM = 0.6  # under-trained tokens sit near the centroid, as in GPT-2
POS_NORM = 2.5  # |W_pos[i]|, every i
CONTEXT_WRITE = 0.5  # a context neuron's output weight along its topic's direction
TOPIC_WRITE = 0.6  # |u_k component| the slow heads write when all attention is on an alpha=0.75 word

# W_pos[i] mixes a constant m, a coordinate linear in i and sinusoids with these shares of
# its squared norm; heads read only the first two.
POS_PERIODS = (7.0, 19, 50, 130, 340, 900, 2500)
W_M, W_LIN, W_SIN = math.sqrt(0.2), math.sqrt(0.5), math.sqrt(0.3 / len(POS_PERIODS))

# LN1 multiplies a typical token's residual by LN1 (its own by LN1 * (1 +- ~7%)); LN2's
# scale is ~1/LN1. G_NORM: a typical token's norm outside the positional subspace.
LN1 = 1 / math.sqrt((TOKEN_NORM**2 + POS_NORM**2) / D_MODEL + 1e-5)
G_NORM = TOKEN_NORM * math.sqrt(1 - POS_OVERLAP**2)
V_SCALE = TOPIC_WRITE / (LN1 * G_NORM * 0.75)
# The method's contribution of an attended word of weight alpha to a neuron reading
# w * u_k is ~ alpha * PER_ALPHA * w (slow-head shares sum to 1, LN2 ~ 1/LN1).
PER_ALPHA = LN1 * G_NORM * V_SCALE * LN1
# A glitch token is short, so LN1 scales it up more than an ordinary token; in units of an
# ordinary token's alpha its glitch direction weighs:
GLITCH_ALPHA = 0.8 * GLITCH_NORM / TOKEN_NORM * math.hypot(TOKEN_NORM, POS_NORM) / math.hypot(GLITCH_NORM, POS_NORM)

_NO_GROUP, _FUNCTION, _GLITCH = -1, N_TOPICS, N_TOPICS + 1  # groups besides topics 0..K-1


@dataclass
class _Draws:
    """The two random streams of one model."""

    gen: torch.Generator
    rng: np.random.Generator

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=0, keepdim=True)


def _token_groups(vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """Per token id [V]: its group (topic k or one of the above), and its topic word's
    index k * WORDS_PER_TOPIC + i (shared by the spaced and bare forms; -1 if none)."""
    group = np.full(len(vocab.tokens), _NO_GROUP)
    word = np.full(len(vocab.tokens), -1)
    index = vocab.index
    for k, words in enumerate(vocab.topic_words):
        for i, ids in enumerate(zip(*(vocab.ids(words, spaced=s) for s in (True, False)))):
            group[list(ids)] = k
            word[list(ids)] = k * WORDS_PER_TOPIC + i
    group[vocab.ids(vocab.function_words) + [index[p] for p in PUNCTUATION]] = _FUNCTION
    group[vocab.ids(vocab.glitch_words)] = _GLITCH
    return group, word


def _subspaces(draws: _Draws) -> dict[str, torch.Tensor]:
    """Orthonormal directions orthogonal to the all-ones vector, so that centring (by
    TransformerLens and by LayerNorm) changes none of them, split into named subspaces
    [d, size]: 'basis' (all), 'pos', 'groups' (g: one per topic, function words, glitch),
    'topic_out' (u: the slow heads' outputs), 'slow_misc', 'misc', 'token' (the rest)."""
    seeded = draws.randn(D_MODEL, D_MODEL)
    seeded[:, 0] = 1.0
    basis = torch.linalg.qr(seeded).Q[:, 1:]
    sizes = {"pos": 17, "groups": N_TOPICS + 2, "topic_out": N_TOPICS + 1, "slow_misc": D_HEAD - (N_TOPICS + 1), "misc": 48}
    sub, start = {"basis": basis}, 0
    for name, size in sizes.items():
        sub[name] = basis[:, start : start + size]
        start += size
    sub["token"] = basis[:, start:]  # each token's own direction
    return sub


def _positions(P: torch.Tensor) -> torch.Tensor:
    """W_pos [N, d] in the positional subspace P [d, 17]: a constant m, (r_i, sqrt(1 - r_i^2))
    with r_i linear in i, and sinusoids; every row has norm POS_NORM. Heads read only m and
    r_i, which makes their scores linear in n - i. P[:, 0] is r's direction, P[:, 1]
    sqrt(1 - r^2)'s, P[:, 2] m's."""
    r = torch.linspace(-1, 1, N_CTX, dtype=torch.float64)
    periods = torch.tensor(POS_PERIODS, dtype=torch.float64)
    angle = 2 * math.pi * torch.arange(N_CTX, dtype=torch.float64)[:, None] / periods
    return POS_NORM * (
        W_M * P[:, 2]
        + W_LIN * (r[:, None] * P[:, 0] + (1 - r**2).clamp(min=0).sqrt()[:, None] * P[:, 1])
        + W_SIN * (angle.cos() @ P[:, 3::2].T + angle.sin() @ P[:, 4::2].T)
    )


def _embeddings(draws: _Draws, sub: dict[str, torch.Tensor], vocab: Vocabulary, group: np.ndarray, word: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """W_E [V, d] and each token's norm [V].

    A token is a group direction (topic k, function words, glitch) with weight alpha, plus
    its own random direction, plus a POS_OVERLAP share along a random direction of the
    positional subspace other than m and r (the head-read coordinates). Norms are
    log-normal around TOKEN_NORM; ' the', the kernels' query, gets the median, so that
    decay_per_token is its kernel's rate."""
    V, own, P = len(vocab.tokens), sub["token"], sub["pos"]
    word_alpha = draws.rng.uniform(0.35, 0.75, size=N_TOPICS * WORDS_PER_TOPIC)
    alpha = np.where(group >= 0, word_alpha[word], 0.0)
    alpha[group == _FUNCTION] = 0.5
    alpha[group == _GLITCH] = 0.8
    alpha = torch.from_numpy(alpha)
    grouped = torch.from_numpy(group >= 0)
    own_dir = _unit(own @ draws.randn(own.shape[1], V)).T  # [V, d]
    group_dir = torch.zeros(V, D_MODEL, dtype=torch.float64)
    group_dir[grouped] = sub["groups"][:, torch.from_numpy(group[group >= 0])].T
    norm = TOKEN_NORM * torch.from_numpy(np.exp(draws.rng.normal(0.0, NORM_SPREAD, size=V)))
    norm[vocab.index["Ġthe"]] = TOKEN_NORM
    norm[torch.from_numpy(group == _GLITCH)] = GLITCH_NORM
    overlap_dir = _unit(P[:, [1] + list(range(3, P.shape[1]))] @ draws.randn(P.shape[1] - 2, V)).T  # [V, d]
    content = alpha[:, None] * group_dir + (1 - alpha**2).sqrt()[:, None] * own_dir
    return norm[:, None] * (math.sqrt(1 - POS_OVERLAP**2) * content + POS_OVERLAP * overlap_dir), norm


# The distractor heads (truth.HEAD_KINDS) are built on top of heads that were local before
# they existed: those draw a local head's rate from the main stream, as they always did, so
# that every other weight stays bit for bit; their own parts come from DISTRACTOR_STREAM.
_DRAWN_AS = {"duplicate-token": "local", "first-token": "local"}
DISTRACTOR_STREAM = 3
# The first-token head scores key i as -SINK_SLOPE * i (for typical tokens): 0 on BOS
# whatever its LayerNorm scale, so BOS keeps ~1 - exp(-SINK_SLOPE) = 63% of the weight at
# every query position, and the next keys decay fast.
SINK_SLOPE = 1.0
# The duplicate-token head: a key holding the query's own token scores DUPLICATE_BONUS above
# the average other token (GPT-2 Small's head 1: ~13, head 5: ~19), with a spread between
# other tokens about an eighth of that (~2 in GPT-2), over a broad kernel (lambda ~ 1/50).
DUPLICATE_BONUS = 8.0


def _head_kinds(draws: _Draws, seed: int, control: bool) -> tuple[list[str], list[float]]:
    """Each head's planted role [H] (a key of HEAD_KINDS) and decay rate lambda [H] (the
    first-token head's is -SINK_SLOPE: it rises towards BOS). The control's slow heads get a
    local head's role and rate, drawn from a stream of their own so that every other weight
    is the same as the toy's; its distractors are the toy's."""
    kind = [name for h in range(N_HEADS) for name, heads in HEAD_KINDS.items() if h in heads]
    rng = draws.rng
    decay = {"slow": lambda: 1 / rng.uniform(35, 70), "local": lambda: rng.uniform(1.0, 2.5), "uniform": lambda: rng.uniform(0, 1 / 3000)}
    lam = [decay[_DRAWN_AS.get(kind[h], kind[h])]() for h in range(N_HEADS)]
    own_rng = np.random.default_rng([seed, VOCAB_SEED, DISTRACTOR_STREAM])
    for h in range(N_HEADS):
        if kind[h] == "duplicate-token":
            lam[h] = 1 / float(own_rng.uniform(35, 70))
        elif kind[h] == "first-token":
            lam[h] = -SINK_SLOPE
    if control:
        control_rng = np.random.default_rng([seed, VOCAB_SEED, 2])
        for h in SLOW_HEADS:
            kind[h], lam[h] = "local", float(control_rng.uniform(1.0, 2.5))
    return kind, lam


def _query_key(draws: _Draws, sub: dict[str, torch.Tensor], W_E_ordinary: torch.Tensor, kind: list[str], lam: list[float],
               seed: int = 0) -> tuple[torch.Tensor, ...]:
    """W_Q, W_K [H, d, e] and b_Q, b_K [H, e].

    Query dims 0 and 2 read (m, -r_n) and key dims 0 and 2 read (r_i, m), so q.k is
    proportional to r_i - r_n: slope lambda per token for typical tokens, 0 at i = n
    whatever the tokens. Key dim 1 reads content (a function-word offset and a per-token
    jitter, by kind) against a constant query (the bias).

    The first-token head's key dim 0 reads r_i + 1 instead (against the query's constant
    m), so its score is -SINK_SLOPE * i: 0 at BOS whatever the tokens. The duplicate-token
    head's dims 3.. read the same random projection of the token's own direction on the
    query and the key side, so that q.k is large for the query's own token (DUPLICATE_BONUS)."""
    P, own, g = sub["pos"], sub["token"], sub["groups"]
    H, d, e, N = N_HEADS, D_MODEL, D_HEAD, N_CTX
    function_offset = {"slow": -0.4, "local": 0.0, "uniform": 0.0, "duplicate-token": 0.0, "first-token": 0.0}
    jitter = {"slow": 0.15, "local": 0.5, "uniform": 0.1, "duplicate-token": 0.15, "first-token": 0.1}
    W_Q, W_K = (torch.zeros(H, d, e, dtype=torch.float64) for _ in range(2))
    b_Q, b_K = (torch.zeros(H, e, dtype=torch.float64) for _ in range(2))
    b_Q[:, 1] = 1.0
    q_scale = 1 / (LN1 * POS_NORM * W_M)  # q_n = (1, -r_n) for a typical token
    W_Q[:, :, 0] = q_scale * P[:, 2]
    W_Q[:, :, 2] = -q_scale * W_M / W_LIN * P[:, 0]
    slope_per_unit = LN1 * POS_NORM * W_LIN * 2 / (N - 1) / math.sqrt(e)
    for h in range(H):
        if kind[h] == "first-token":
            W_K[h, :, 0] = lam[h] / slope_per_unit * (P[:, 0] + W_LIN / W_M * P[:, 2])
        else:
            W_K[h, :, 0] = lam[h] / slope_per_unit * P[:, 0]
            W_K[h, :, 2] = lam[h] / slope_per_unit * W_LIN / W_M * P[:, 2]
        v = _unit(own @ draws.randn(own.shape[1]))
        spread = (W_E_ordinary @ v).std()
        W_K[h, :, 1] = math.sqrt(e) / LN1 * (
            jitter[kind[h]] / spread * v + function_offset[kind[h]] / (G_NORM * 0.5) * g[:, _FUNCTION]
        )
    gen = torch.Generator().manual_seed(seed * 1_000_003 + DISTRACTOR_STREAM)
    for h in (h for h in range(H) if kind[h] == "duplicate-token"):
        # R: e - 3 orthonormal directions of the token subspace. A typical token's own part
        # has squared norm ~own_sq; q.k / sqrt(e) for the same token is then ~c^2 own_sq (e - 3)
        # / dim(own), and c sets it to DUPLICATE_BONUS.
        R = own @ torch.linalg.qr(torch.randn(own.shape[1], e - 3, generator=gen, dtype=torch.float64)).Q
        own_sq = float(((W_E_ordinary @ own).pow(2).sum(-1)).mean())
        c = math.sqrt(DUPLICATE_BONUS * math.sqrt(e) * own.shape[1] / (own_sq * (e - 3))) / LN1
        W_Q[h, :, 3:] = c * R
        W_K[h, :, 3:] = c * R
    return W_Q, b_Q, W_K, b_K


def _values(draws: _Draws, sub: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W_V [H, d, e], b_V [H, e], W_O [H, e, d].

    The slow heads map topic k's direction g_k to u_k (and the glitch direction to
    u_glitch), with per-head shares that sum to 1 over the slow heads; what else they read
    of a token goes to 'slow_misc', and every other head writes into 'misc'."""
    g, u, own, K, e = sub["groups"], sub["topic_out"], sub["token"], N_TOPICS, D_HEAD
    W_V = torch.zeros(N_HEADS, D_MODEL, e, dtype=torch.float64)
    b_V = torch.zeros(N_HEADS, e, dtype=torch.float64)
    W_O = torch.zeros(N_HEADS, e, D_MODEL, dtype=torch.float64)
    share = torch.from_numpy(draws.rng.dirichlet(np.full(len(SLOW_HEADS), 2.0), size=K + 1).T)  # [slow, K+1]
    for s, h in enumerate(SLOW_HEADS):
        W_V[h, :, : K + 1] = V_SCALE * g[:, list(range(K)) + [_GLITCH]]
        W_O[h, : K + 1] = share[s][:, None] * u.T
    for h in range(N_HEADS):
        rest = K + 1 if h in SLOW_HEADS else 0
        out = sub["slow_misc"] if h in SLOW_HEADS else sub["misc"]
        W_V[h, :, rest:] = own @ draws.randn(own.shape[1], e - rest) * (0.1 / LN1 / TOKEN_NORM)
        W_O[h, rest:] = draws.randn(e - rest, out.shape[1]) @ out.T * (0.3 / math.sqrt(out.shape[1] * (e - rest) / e))
    return W_V, b_V, W_O


class _Neurons:
    """W_in [d, M] and b_in [M], planted one neuron at a time in a random order of j."""

    def __init__(self, draws: _Draws):
        self.order = torch.randperm(D_MLP, generator=draws.gen).tolist()
        self.W_in = torch.zeros(D_MODEL, D_MLP, dtype=torch.float64)
        self.b_in = torch.zeros(D_MLP, dtype=torch.float64)

    def plant(self, reads: torch.Tensor, bias: float) -> int:
        """The next neuron j, set to read reads [d] with bias ``bias``."""
        j = self.order.pop()
        self.W_in[:, j] = reads
        self.b_in[j] = bias
        return j


def _context_neurons(draws: _Draws, sub: dict[str, torch.Tensor], neurons: _Neurons, slow_misc_write: torch.Tensor) -> tuple[list[dict], list[int]]:
    """The context neurons, and the silent topics (which none reads). slow_misc_write
    [V_ordinary, d]: each token's write into slow_misc, in pre-activation units per unit of
    W_in (as if all attention were on it; LN2 ~ 1/LN1).

    Each topic that is not silent gets 1-4 neurons; three contrast neurons read topic a
    present and topic b absent (cf. colour/color). Designed tops start at CONTEXT_TOP_MIN,
    above the noise neurons' ceiling, so that a threshold between the two separates planted
    from noise neurons."""
    rng, u, own, slow_misc = draws.rng, sub["topic_out"], sub["token"], sub["slow_misc"]

    def plant(topic: int, against: int | None, top: float, need: float) -> dict:
        """A neuron reading u_topic (minus u_against) whose largest contribution is ~top
        and which fires once ``need`` of the attention is on alpha=0.75 topic words."""
        reads = u[:, topic] - (u[:, against] if against is not None else 0)
        # Every token also contributes a little through slow_misc (std 2% of top), as in
        # GPT-2 where no token's contribution is exactly zero; and the neuron reads one
        # random token direction: token-level noise of std ~0.1 |bias| (largest over the
        # vocabulary ~0.4 |bias|). Both stay below |bias| = top * need, so the neuron is
        # silent (pre < 0) wherever its topic is absent.
        spread = _unit(slow_misc @ draws.randn(slow_misc.shape[1]))
        spread *= 0.02 * top / (slow_misc_write @ spread).std()
        noise = 0.1 * top * need * math.sqrt(own.shape[1]) / (LN1 * TOKEN_NORM)
        j = neurons.plant(top / (0.75 * PER_ALPHA) * reads + spread + noise * _unit(own @ draws.randn(own.shape[1])), -top * need)
        return {"neuron": j, "topic": topic, "against": against, "top": top, "need": need}

    silent = rng.choice(sorted(set(range(N_TOPICS)) - set(CALIBRATION_TOPICS)), size=4, replace=False)
    voiced = sorted(set(range(N_TOPICS)) - set(silent.tolist()))
    planted = []
    for k in voiced:
        for _ in range(rng.integers(1, 5)):
            top = float(np.exp(rng.uniform(np.log(CONTEXT_TOP_MIN), np.log(16.0))))
            planted.append(plant(k, None, top, float(rng.uniform(0.08, 0.2))))
    for _ in range(3):
        a, b = (int(x) for x in rng.choice(voiced, size=2, replace=False))
        planted.append(plant(a, b, float(rng.uniform(6, 12)), float(rng.uniform(0.08, 0.2))))
    return planted, sorted(silent.tolist())


def _glitch_neurons(draws: _Draws, sub: dict[str, torch.Tensor], neurons: _Neurons) -> list[dict]:
    """Two neurons that fire only through glitch tokens, which text never contains."""
    planted = []
    for _ in range(2):
        top = float(draws.rng.uniform(8, 14))
        reads = top / (GLITCH_ALPHA * PER_ALPHA) * sub["topic_out"][:, N_TOPICS] + 0.05 * _unit(sub["token"] @ draws.randn(sub["token"].shape[1]))
        planted.append({"neuron": neurons.plant(reads, -top / 2), "top": top})
    return planted


def _topic_token_neurons(draws: _Draws, sub: dict[str, torch.Tensor], neurons: _Neurons) -> list[dict]:
    """Twelve neurons that read the current token's topic directly (not through attention)."""
    return [{"neuron": neurons.plant(4.0 / (LN1 * G_NORM * 0.75) * sub["groups"][:, k], -2.0), "topic": k}
            for k in draws.rng.choice(N_TOPICS, size=12, replace=False).tolist()]


def _token_neurons(draws: _Draws, neurons: _Neurons, W_E: torch.Tensor, norm: torch.Tensor, group: np.ndarray) -> list[dict]:
    """150 neurons that each read one token's embedding (W_E [V, d], norm [V])."""
    candidates = torch.from_numpy(np.flatnonzero(group != _GLITCH)[: -1])
    return [{"neuron": neurons.plant(4.0 / (LN1 * TOKEN_NORM) * W_E[t] / norm[t], -2.0), "token_id": t}
            for t in candidates[torch.randperm(len(candidates), generator=draws.gen)[:150]].tolist()]


def _noise_neurons(draws: _Draws, sub: dict[str, torch.Tensor], neurons: _Neurons) -> list[int]:
    """Every neuron not planted yet: a random direction (pre-activation std ~1) and a weak
    random reading of the topic outputs, std NOISE_TOPIC_READ per topic in designed-top
    units: the largest of ~3000 neurons x 25 such readings is ~4.3 std ~ 2.6
    (NOISE_TOP_CEILING), and most are ~1-2: the low-threshold false positives."""
    noise = torch.tensor(sorted(neurons.order))
    neurons.W_in[:, noise] = (_unit(sub["basis"] @ draws.randn(D_MODEL - 1, len(noise))) / LN1
                              + sub["topic_out"] @ draws.randn(N_TOPICS + 1, len(noise)) * (NOISE_TOPIC_READ / (0.75 * PER_ALPHA)))
    neurons.b_in[noise] = torch.from_numpy(draws.rng.normal(-1.0, 0.5, size=len(noise)))
    return noise.tolist()


def _outputs(draws: _Draws, sub: dict[str, torch.Tensor], context: list[dict]) -> torch.Tensor:
    """W_out [M, d]: small and random, except that context neurons also write their topic's
    direction g_k. Through the tied unembedding (W_U = W_E) they promote their topic's
    words, as Neo et al.'s "next-token neurons" promote the tokens their context predicts.
    g_k's logit for a topic word, alpha * |W_E| ~ 1.9 per unit of CONTEXT_WRITE, stands far
    above the random part's (std ~0.07)."""
    basis = sub["basis"]
    W_out = draws.randn(D_MLP, D_MODEL) @ basis @ basis.T * 0.02
    for planted in context:
        W_out[planted["neuron"]] += CONTEXT_WRITE * sub["groups"][:, planted["topic"]]
    return W_out


def _realism(W_E_ordinary: torch.Tensor, norm_ordinary: torch.Tensor, W_pos: torch.Tensor) -> dict:
    """How close the embeddings come to GPT-2 Small's (see build_model's 'realism')."""
    cos = _unit(W_E_ordinary.T).T @ _unit(W_pos.T)  # [ordinary tokens, N]
    x_norm = (W_E_ordinary[:, None] + W_pos[None, ::64]).norm(dim=-1)  # LN1's scale is |x| / sqrt(d)
    return {
        "norm_spread": NORM_SPREAD,
        "pos_overlap": POS_OVERLAP,
        "token_norm_quantiles_5_50_95": norm_ordinary.quantile(torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist(),
        "mean_abs_cos_token_pos": float(cos.abs().mean()),
        "max_abs_cos_token_pos": float(cos.abs().max()),
        "ln1_scale_relative_std": float(x_norm.std() / x_norm.mean()),
    }


def layer0_weights(seed: int = 0, control: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Layer 0's weights in TransformerLens's layout (float64), and the plant: the
    model-dependent part of the ground truth (see :func:`ctxneurons.toy.model.build_model`).

    ``control``: the negative control, the same model with its slowly decaying heads made
    local: their query-key circuits get a local head's decay rate and a local head's
    content scores; what they read and write (their OV circuits) is unchanged.

    Returns W_E [V, d], W_pos [N, d], W_Q/W_K/W_V [H, d, e], b_Q/b_K/b_V [H, e],
    W_O [H, e, d], W_in [d, M], b_in [M], W_out [M, d].
    """
    draws = _Draws(torch.Generator().manual_seed(seed), np.random.default_rng([seed, VOCAB_SEED]))
    vocab = vocabulary()
    sub = _subspaces(draws)
    W_pos = _positions(sub["pos"])
    group, word = _token_groups(vocab)
    W_E, norm = _embeddings(draws, sub, vocab, group, word)
    ordinary = torch.from_numpy(group != _GLITCH)
    kind, lam = _head_kinds(draws, seed, control)
    W_Q, b_Q, W_K, b_K = _query_key(draws, sub, W_E[ordinary], kind, lam, seed)
    W_V, b_V, W_O = _values(draws, sub)
    slow_misc_write = LN1 * W_E[ordinary] @ sum(W_V[h] @ W_O[h] for h in SLOW_HEADS) * LN1

    neurons = _Neurons(draws)
    context, silent = _context_neurons(draws, sub, neurons, slow_misc_write)
    plant = {
        "context_neurons": context,
        "glitch_neurons": _glitch_neurons(draws, sub, neurons),
        "topic_token_neurons": _topic_token_neurons(draws, sub, neurons),
        "token_neurons": _token_neurons(draws, neurons, W_E, norm, group),
        "noise_neurons": _noise_neurons(draws, sub, neurons),
    }
    W_out = _outputs(draws, sub, context)
    plant.update(
        realism=_realism(W_E[ordinary], norm[ordinary], W_pos),
        heads={name: [h for h in range(N_HEADS) if kind[h] == name] for name in HEAD_KINDS},
        head_kind=kind,
        kernel_kind=[KERNEL_KIND[k] for k in kind],
        kernel_kinds={name: [h for h in range(N_HEADS) if KERNEL_KIND[kind[h]] == name] for name in dict.fromkeys(KERNEL_KIND.values())},
        distractors={"duplicate_token": HEAD_KINDS["duplicate-token"][0], "first_token": HEAD_KINDS["first-token"][0],
                     "uniform": list(HEAD_KINDS["uniform"])},
        control=control,
        decay_per_token=lam,
        silent_topics=silent,
        context_top_min=CONTEXT_TOP_MIN,
        noise_top_ceiling=NOISE_TOP_CEILING,
    )
    weights = dict(W_E=W_E, W_pos=W_pos, W_Q=W_Q, b_Q=b_Q, W_K=W_K, b_K=b_K, W_V=W_V, b_V=b_V, W_O=W_O,
                   W_in=neurons.W_in, b_in=neurons.b_in, W_out=W_out)
    return weights, plant
