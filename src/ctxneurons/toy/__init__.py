"""A planted-circuit GPT-2: ground truth for the method, and the offline edition of the book.

The toy model has GPT-2 Small's layer-0 geometry (d_model 768, 12 heads of d_head 64,
d_mlp 3072, n_ctx 1024) and one layer. Its vocabulary is synthetic words in topic
groups plus English function words, and its layer 0 has by construction the structure
the paper finds in GPT-2 Small:

- every residual direction used is orthogonal to the all-ones vector, so TransformerLens's
  centring and LayerNorm folding leave the construction intact;
- each row of W_pos carries a constant coordinate and one linear in the position i. A
  head's query reads both at n, its key both at i, so that it scores key i as
  -lambda (n - i) (times the two LayerNorm scales relative to a typical token's), and its
  positional kernel is exp(-lambda (n - i)): large lambda gives local heads, lambda ~ 1/50
  the slowly decaying heads, lambda ~ 0 uniform heads;
- the slowly decaying heads' OV circuits map each topic's shared embedding direction
  g_k to an output direction u_k, so their summed output is a decaying average of
  "how much topic k is in the recent context";
- context neurons read u_k (their bias sets how much topic k is needed) and write topic k's
  embedding direction, which the tied unembedding reads as topic k's words; other neurons
  read single tokens' embeddings directly, or random directions.

The decomposition of METHOD.md section 1 is not exact on this model, for the reasons it is
not exact on GPT-2 Small. Token-embedding norms spread around TOKEN_NORM (log-normal,
sigma NORM_SPREAD: about 95% within +-20%), and each token embedding has a POS_OVERLAP
share of its norm in the positional subspace (mean |cos(W_E[t], W_pos[i])| ~ 0.04; GPT-2
Small: ~0.05). LN1's scale then varies from token to token (std ~7%) and a little with
position, and the decomposition's single C stands in for it. Its error in a score is
~ (relative LN error) x lambda (n - i): small for nearby keys, where the mass is. The
overlap stays out of the two coordinates the heads read: it changes LN's scale, the
non-linearity the decomposition approximates, without giving a token a position of its
own (which would shift every local head's kernel).

:func:`documents` and :func:`calibration_text` generate text in the same vocabulary,
which is fixed (it does not depend on the model seed), so they tokenise without
unknown tokens under every toy model's tokenizer.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

VERSION = "toy-v3"  # v3: context neurons write their topic (W_out)
STAMP_FILE = "toy_version.txt"
GROUND_TRUTH_FILE = "ground_truth.json"
EOT = "<|endoftext|>"

# Vocabulary and corpus; fixed so that documents() needs no model.
VOCAB_SEED = 20251003
N_TOPICS = 24
WORDS_PER_TOPIC = 90
N_GENERIC = 300
N_GLITCH = 40
FUNCTION_WORDS = (
    "the of and to a in is that for it as with was on be by at this from or an are not but "
    "which have has had were they their his her its one all we there can more also when who "
    "will would been into than so some these other about"
).split()
THE_SHARE = 0.2  # of function-word tokens; ' the' is then ~8% of all tokens, as in English
PUNCTUATION = (".", ",")
CALIBRATION_TOPICS = (0, 3, 7, 12, 16)

# Discovery's ground truth: context neurons' designed largest contributions are
# log-uniform in [CONTEXT_TOP_MIN, 16]; noise neurons read every topic output weakly.
CONTEXT_TOP_MIN = 3.0
NOISE_TOPIC_READ = 0.6
NOISE_TOP_CEILING = NOISE_TOPIC_READ * 4.3  # NOISE_TOPIC_READ x the largest of ~3000 x 25 standard normals
CONTEXT_WRITE = 0.5  # a context neuron's output weight along its topic's direction

# Geometry (GPT-2 Small's layer 0).
D_MODEL, N_HEADS, D_HEAD, D_MLP, N_CTX = 768, 12, 64, 3072, 1024
# The slowly decaying heads sit where the paper found them in GPT-2 Small.
HEAD_KINDS = {"slow": (0, 2, 6, 8, 9, 10), "local": (1, 3, 4, 5), "uniform": (7, 11)}
SLOW_HEADS = HEAD_KINDS["slow"]
TOKEN_NORM = 3.5  # median |W_E[t]| of ordinary tokens (GPT-2 Small's typical value)
NORM_SPREAD = 0.1  # sigma of log |W_E[t]|: GPT-2 Small's common tokens spread by ~+-20% around 3.5
POS_OVERLAP = 0.25  # share of |W_E[t]| in the positional subspace: mean |cos(W_E, W_pos)| ~ 0.04
GLITCH_NORM = 0.6  # under-trained tokens sit near the centroid, as in GPT-2
POS_NORM = 2.5  # |W_pos[i]|, every i


@dataclass(frozen=True)
class Vocabulary:
    """The toy vocabulary: token strings in id order ('Ġ' marks a leading space, as in
    GPT-2's byte-level scheme) and the group of each word.

    Every non-glitch word has a spaced and a bare form (the bare one starts a text);
    glitch words only a spaced form, and the corpus never emits them. '<|endoftext|>' is
    the last id.
    """

    tokens: tuple[str, ...]
    function_words: tuple[str, ...]
    generic_words: tuple[str, ...]
    topic_words: tuple[tuple[str, ...], ...]  # [N_TOPICS][WORDS_PER_TOPIC], most frequent first
    glitch_words: tuple[str, ...]

    @property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def ids(self, words, spaced: bool | None = None) -> list[int]:
        """Token ids of ``words`` in both forms (or only spaced / only bare)."""
        index = self.index
        forms = {None: ("Ġ", ""), True: ("Ġ",), False: ("",)}[spaced]
        return [index[p + w] for p in forms for w in words if p + w in index]


def _make_words(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    onsets = "b c d f g h j k l m n p r s t v w z br cr dr fl gr pl st tr sh ch th".split()
    vowels = "a e i o u ai ea oo".split()
    codas = ["", "", "n", "r", "s", "l", "m", "k"]
    words: list[str] = []
    while len(words) < n:
        word = "".join(
            onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))] + codas[rng.integers(len(codas))]
            for _ in range(rng.integers(2, 4))
        )
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


@lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    rng = np.random.default_rng(VOCAB_SEED)
    taken = set(FUNCTION_WORDS)
    generic = _make_words(rng, N_GENERIC, taken)
    topics = [tuple(_make_words(rng, WORDS_PER_TOPIC, taken)) for _ in range(N_TOPICS)]
    # Glitch strings look like GPT-2's (' SolidGoldMagikarp'): capitalised, never in text.
    glitch = [w[0].upper() + w[1:] + "Gold" for w in _make_words(rng, N_GLITCH, taken)]
    words = list(FUNCTION_WORDS) + generic + [w for t in topics for w in t]
    tokens = ["Ġ" + w for w in words] + ["Ġ" + w for w in glitch] + words + list(PUNCTUATION) + [EOT]
    return Vocabulary(tuple(tokens), tuple(FUNCTION_WORDS), tuple(generic), tuple(topics), tuple(glitch))


def tokenizer():
    """The toy tokenizer: word-level over GPT-2's byte-level pre-tokenisation, so
    ' the' is one token and decode(encode(text)) == text for corpus text."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    tok = Tokenizer(models.WordLevel(vocab.index, unk_token=EOT))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT, model_max_length=N_CTX
    )


# ---------------------------------------------------------------- corpus


def _zipf(n: int) -> np.ndarray:
    p = 1.0 / (np.arange(n) + 3.0)
    return p / p.sum()


def _function_probs() -> np.ndarray:
    rest = _zipf(len(FUNCTION_WORDS) - 1) * (1 - THE_SHARE)
    return np.concatenate([[THE_SHARE], rest])  # FUNCTION_WORDS[0] is 'the'


@lru_cache(maxsize=1)
def _spaced_words() -> np.ndarray:
    """Every corpus word with its leading space, as an object array: function words,
    then generic words, then topic k's words at F + N_GENERIC + k * WORDS_PER_TOPIC."""
    vocab = vocabulary()
    words = [*vocab.function_words, *vocab.generic_words, *(w for t in vocab.topic_words for w in t)]
    return np.array([" " + w for w in words], dtype=object)


def _generate(rng: np.random.Generator, n_tokens: int, topics: np.ndarray, weights: np.ndarray, p_function: float) -> str:
    """One text of exactly ``n_tokens`` tokens: i.i.d. words from a topic mixture, with
    function words and sentence punctuation.

    Token i is a stop ('.' or ',') when at least sentence_gap[i] words came since the
    previous stop; it then replaces the word drawn for i. The random draws, and so the
    text, are those of the original word-by-word loop (tests/test_toy_documents.py pins them)."""
    p_generic = 0.2 * (1 - p_function)
    p_topic = (1 - p_function - p_generic) * weights
    kinds = rng.choice(2 + len(topics), size=n_tokens, p=np.concatenate([[p_function, p_generic], p_topic]))
    function = rng.choice(len(FUNCTION_WORDS), size=n_tokens, p=_function_probs())
    generic = rng.integers(N_GENERIC, size=n_tokens)
    in_topic = rng.choice(WORDS_PER_TOPIC, size=n_tokens, p=_zipf(WORDS_PER_TOPIC))
    sentence_gap = rng.integers(8, 25, size=n_tokens)
    # Stops: after a stop at s, the next is the first i with i - s - 1 >= sentence_gap[i],
    # i.e. i - sentence_gap[i] > s (i > 0 holds since gaps are >= 8).
    stops, s = [], -1
    for i, r in enumerate((np.arange(n_tokens) - sentence_gap).tolist()):
        if r > s:
            stops.append(i)
            s = i
    n_function = len(FUNCTION_WORDS)
    topic_of = np.asarray(topics)[np.maximum(kinds - 2, 0)]
    word = np.where(kinds == 0, function,
                    np.where(kinds == 1, n_function + generic, n_function + N_GENERIC + topic_of * WORDS_PER_TOPIC + in_topic))
    pieces = _spaced_words()[word]
    # One uniform draw per stop, in order, as the loop drew them.
    pieces[stops] = np.where(rng.random(len(stops)) < 0.7, ".", ",")
    if n_tokens:
        pieces[0] = pieces[0][1:]  # the text starts without a space (token 0 is never a stop)
    return "".join(pieces.tolist())


def documents(n: int, seed: int = 0, min_tokens: int = 1100) -> list[str]:
    """``n`` toy documents of exactly ``min_tokens`` tokens each (no BOS), deterministic.

    Document k depends only on (seed, k), so a longer list extends a shorter one. Each
    mixes 1-3 topics (Dirichlet weights) with words drawn i.i.d., and a function-word
    rate that varies between documents (the paper's stop-word-density effect).
    """
    texts = []
    for k in range(n):
        rng = np.random.default_rng([seed, k, VOCAB_SEED])
        n_topics = rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25])
        topics = rng.choice(N_TOPICS, size=n_topics, replace=False)
        weights = rng.dirichlet(np.full(n_topics, 2.0))
        texts.append(_generate(rng, min_tokens, topics, weights, p_function=rng.uniform(0.34, 0.5)))
    return texts


# Domains beside the mixed corpus: each draws its documents' topics from one group of
# topics only, or (terse) keeps the mixed topics but writes far fewer function words, the
# way lists, headlines or code do. name -> (topic pool, range of the function-word rate).
DOMAINS: dict[str, tuple[tuple[int, ...], tuple[float, float]]] = {
    "topics-a": (tuple(range(0, 8)), (0.34, 0.5)),
    "topics-b": (tuple(range(8, 16)), (0.34, 0.5)),
    "topics-c": (tuple(range(16, 24)), (0.34, 0.5)),
    "terse": (tuple(range(N_TOPICS)), (0.08, 0.14)),
}


def domain_documents(domain: str, n: int, seed: int = 0, min_tokens: int = 1100) -> list[str]:
    """``n`` documents of the toy domain ``domain`` (a key of DOMAINS), made as
    :func:`documents` makes its own but with the domain's topic pool and function-word
    rate, and seeded apart from them and from every other domain's."""
    if domain not in DOMAINS:
        raise ValueError(f"toy domain {domain!r} does not exist; the toy domains are {', '.join(DOMAINS)}")
    pool, (p_lo, p_hi) = DOMAINS[domain]
    salt = 1 + list(DOMAINS).index(domain)
    texts = []
    for k in range(n):
        rng = np.random.default_rng([seed, k, VOCAB_SEED, salt])
        n_topics = rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25])
        topics = rng.choice(np.array(pool), size=n_topics, replace=False)
        weights = rng.dirichlet(np.full(n_topics, 2.0))
        texts.append(_generate(rng, min_tokens, topics, weights, p_function=rng.uniform(p_lo, p_hi)))
    return texts


def calibration_text() -> str:
    """The designated calibration text: 1100 tokens of mixed content over
    CALIBRATION_TOPICS only, so neurons of the other topics never fire on it."""
    rng = np.random.default_rng([VOCAB_SEED, 1])
    topics = np.array(CALIBRATION_TOPICS)
    weights = np.full(len(topics), 1.0 / len(topics))
    return _generate(rng, 1100, topics, weights, p_function=0.42)


# ---------------------------------------------------------------- weights


_NO_GROUP, _FUNCTION, _GLITCH = -1, N_TOPICS, N_TOPICS + 1  # groups besides topics 0..K-1


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


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=0, keepdim=True)


def _weights(seed: int, control: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Layer 0's weights in TransformerLens's layout (float64) and the ground truth.

    ``control``: the negative control, the same model with its slowly decaying heads made
    local: their query-key circuits get a local head's decay rate (drawn from a stream of
    their own, so every other weight is the same as the toy's) and a local head's content
    scores; what they read and write (their OV circuits) is unchanged.

    Returns W_E [V, d], W_pos [N, d], W_Q/W_K/W_V [H, d, e], b_Q/b_K/b_V [H, e],
    W_O [H, e, d], W_in [d, M], b_in [M], W_out [M, d].
    """
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng([seed, VOCAB_SEED])
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    vocab = vocabulary()
    V, d, H, e, M, N = len(vocab.tokens), D_MODEL, N_HEADS, D_HEAD, D_MLP, N_CTX
    K = N_TOPICS

    # Orthonormal directions orthogonal to the all-ones vector, so that centring (by
    # TransformerLens and by LayerNorm) changes none of them; split into subspaces.
    seeded = randn(d, d)
    seeded[:, 0] = 1.0
    basis = torch.linalg.qr(seeded).Q[:, 1:]
    sizes = {"pos": 17, "groups": K + 2, "topic_out": K + 1, "slow_misc": e - (K + 1), "misc": 48}
    sub, start = {}, 0
    for name, size in sizes.items():
        sub[name] = basis[:, start : start + size]
        start += size
    sub["token"] = basis[:, start:]  # each token's own direction
    g, u, misc, own = sub["groups"], sub["topic_out"], sub["misc"], sub["token"]

    # Positions: a constant m, (r_i, sqrt(1 - r_i^2)) with r_i linear in i, and sinusoids;
    # every row has norm POS_NORM. Heads read only m and r_i, which makes their scores
    # linear in n - i. P[:, 0] is r's direction, P[:, 1] sqrt(1 - r^2)'s, P[:, 2] m's.
    P = sub["pos"]
    r = torch.linspace(-1, 1, N, dtype=torch.float64)
    periods = torch.tensor([7.0, 19, 50, 130, 340, 900, 2500], dtype=torch.float64)
    angle = 2 * math.pi * torch.arange(N, dtype=torch.float64)[:, None] / periods
    w_m, w_lin, w_sin = math.sqrt(0.2), math.sqrt(0.5), math.sqrt(0.3 / len(periods))
    W_pos = POS_NORM * (
        w_m * P[:, 2]
        + w_lin * (r[:, None] * P[:, 0] + (1 - r**2).clamp(min=0).sqrt()[:, None] * P[:, 1])
        + w_sin * (angle.cos() @ P[:, 3::2].T + angle.sin() @ P[:, 4::2].T)
    )

    # Token embeddings: a group direction (topic k, function words, glitch) with weight
    # alpha, plus a token's own random direction, plus a POS_OVERLAP share along a random
    # direction of the positional subspace other than m and r (the head-read coordinates).
    # Norms: log-normal around TOKEN_NORM; ' the', the kernels' query, gets the median, so
    # that decay_per_token is its kernel's rate.
    group, word = _token_groups(vocab)
    word_alpha = rng.uniform(0.35, 0.75, size=K * WORDS_PER_TOPIC)
    alpha = np.where(group >= 0, word_alpha[word], 0.0)
    alpha[group == _FUNCTION] = 0.5
    alpha[group == _GLITCH] = 0.8
    alpha = torch.from_numpy(alpha)
    grouped = torch.from_numpy(group >= 0)
    own_dir = _unit(own @ randn(own.shape[1], V)).T  # [V, d]
    group_dir = torch.zeros(V, d, dtype=torch.float64)
    group_dir[grouped] = g[:, torch.from_numpy(group[group >= 0])].T
    glitchy = torch.from_numpy(group == _GLITCH)
    norm = TOKEN_NORM * torch.from_numpy(np.exp(rng.normal(0.0, NORM_SPREAD, size=V)))
    norm[vocab.index["Ġthe"]] = TOKEN_NORM
    norm[glitchy] = GLITCH_NORM
    overlap_dir = _unit(P[:, [1] + list(range(3, P.shape[1]))] @ randn(P.shape[1] - 2, V)).T  # [V, d]
    content = alpha[:, None] * group_dir + (1 - alpha**2).sqrt()[:, None] * own_dir
    W_E = norm[:, None] * (math.sqrt(1 - POS_OVERLAP**2) * content + POS_OVERLAP * overlap_dir)

    # LN1 multiplies a typical token's residual by ln1 (its own by ln1 * (1 +- ~7%)); LN2's
    # scale is ~1/ln1.
    ln1 = 1 / math.sqrt((TOKEN_NORM**2 + POS_NORM**2) / d + 1e-5)
    g_norm = TOKEN_NORM * math.sqrt(1 - POS_OVERLAP**2)  # a typical token's norm outside the positional subspace

    # Attention scores. Query dims 0 and 2 read (m, -r_n) and key dims 0 and 2 read
    # (r_i, m), so q.k is proportional to r_i - r_n: slope lambda per token for typical
    # tokens, 0 at i = n whatever the tokens. Key dim 1 reads content (a function-word
    # offset and a per-token jitter) against a constant query (the bias).
    kind = [name for h in range(H) for name, heads in HEAD_KINDS.items() if h in heads]
    decay = {"slow": lambda: 1 / rng.uniform(35, 70), "local": lambda: rng.uniform(1.0, 2.5), "uniform": lambda: rng.uniform(0, 1 / 3000)}
    function_offset = {"slow": -0.4, "local": 0.0, "uniform": 0.0}
    jitter = {"slow": 0.15, "local": 0.5, "uniform": 0.1}
    lam = [decay[kind[h]]() for h in range(H)]
    qk_kind = list(kind)
    if control:
        control_rng = np.random.default_rng([seed, VOCAB_SEED, 2])
        for h in SLOW_HEADS:
            qk_kind[h], lam[h] = "local", float(control_rng.uniform(1.0, 2.5))
    W_Q, W_K, W_V = (torch.zeros(H, d, e, dtype=torch.float64) for _ in range(3))
    b_Q, b_K, b_V = (torch.zeros(H, e, dtype=torch.float64) for _ in range(3))
    W_O = torch.zeros(H, e, d, dtype=torch.float64)
    b_Q[:, 1] = 1.0
    ordinary = ~glitchy
    q_scale = 1 / (ln1 * POS_NORM * w_m)  # q_n = (1, -r_n) for a typical token
    W_Q[:, :, 0] = q_scale * P[:, 2]
    W_Q[:, :, 2] = -q_scale * w_m / w_lin * P[:, 0]
    for h in range(H):
        slope_per_unit = ln1 * POS_NORM * w_lin * 2 / (N - 1) / math.sqrt(e)
        W_K[h, :, 0] = lam[h] / slope_per_unit * P[:, 0]
        W_K[h, :, 2] = lam[h] / slope_per_unit * w_lin / w_m * P[:, 2]
        v = _unit(own @ randn(own.shape[1]))
        spread = (W_E[ordinary] @ v).std()
        W_K[h, :, 1] = math.sqrt(e) / ln1 * (
            jitter[qk_kind[h]] / spread * v + function_offset[qk_kind[h]] / (g_norm * 0.5) * g[:, _FUNCTION]
        )

    # Values: the slow heads map topic k's direction to u_k (and the glitch direction to
    # u_glitch), with per-head shares that sum to 1 over the slow heads; what else they
    # read of a token goes to 'slow_misc', and every other head writes into 'misc'.
    topic_write = 0.6  # |u_k component| written when all attention is on an alpha=0.75 word
    v_scale = topic_write / (ln1 * g_norm * 0.75)
    share = torch.from_numpy(rng.dirichlet(np.full(len(SLOW_HEADS), 2.0), size=K + 1).T)  # [slow, K+1]
    for s, h in enumerate(SLOW_HEADS):
        W_V[h, :, : K + 1] = v_scale * g[:, list(range(K)) + [_GLITCH]]
        W_O[h, : K + 1] = share[s][:, None] * u.T
    for h in range(H):
        rest = K + 1 if h in SLOW_HEADS else 0
        out = sub["slow_misc"] if h in SLOW_HEADS else misc
        W_V[h, :, rest:] = own @ randn(own.shape[1], e - rest) * (0.1 / ln1 / TOKEN_NORM)
        W_O[h, rest:] = randn(e - rest, out.shape[1]) @ out.T * (0.3 / math.sqrt(out.shape[1] * (e - rest) / e))
    # Each token's write into slow_misc, in pre-activation units per unit of W_in
    # (as if all attention were on it; LN2 ~ 1/ln1): [V, d].
    slow_misc_write = ln1 * W_E[ordinary] @ sum(W_V[h] @ W_O[h] for h in SLOW_HEADS) * ln1

    # Neurons. The method's contribution of an attended word of weight alpha to a neuron
    # reading w * u_k is ~ alpha * per_alpha * w (slow-head shares sum to 1, LN2 ~ 1/ln1).
    per_alpha = ln1 * g_norm * v_scale * ln1
    order = torch.randperm(M, generator=gen).tolist()
    W_in = torch.zeros(d, M, dtype=torch.float64)
    b_in = torch.zeros(M, dtype=torch.float64)
    truth = {"context_neurons": [], "glitch_neurons": [], "topic_token_neurons": [], "token_neurons": []}

    def plant_context_neuron(topic: int, against: int | None, top: float, need: float) -> None:
        """A neuron reading u_topic (minus u_against) whose largest contribution is ~top
        and which fires once ``need`` of the attention is on alpha=0.75 topic words."""
        j = order.pop()
        reads = u[:, topic] - (u[:, against] if against is not None else 0)
        # Every token also contributes a little through slow_misc (std 2% of top), as in
        # GPT-2 where no token's contribution is exactly zero; and the neuron reads one
        # random token direction: token-level noise of std ~0.1 |bias| (largest over the
        # vocabulary ~0.4 |bias|). Both stay below |bias| = top * need, so the neuron is
        # silent (pre < 0) wherever its topic is absent.
        spread = _unit(sub["slow_misc"] @ randn(sub["slow_misc"].shape[1]))
        spread *= 0.02 * top / (slow_misc_write @ spread).std()
        noise = 0.1 * top * need * math.sqrt(own.shape[1]) / (ln1 * TOKEN_NORM)
        W_in[:, j] = top / (0.75 * per_alpha) * reads + spread + noise * _unit(own @ randn(own.shape[1]))
        b_in[j] = -top * need
        truth["context_neurons"].append({"neuron": j, "topic": topic, "against": against, "top": top, "need": need})

    silent = rng.choice(sorted(set(range(K)) - set(CALIBRATION_TOPICS)), size=4, replace=False)
    voiced = sorted(set(range(K)) - set(silent.tolist()))
    # Designed tops start at CONTEXT_TOP_MIN, above the noise neurons' ceiling (below), so
    # that a threshold between the two separates planted from noise neurons.
    for k in voiced:
        for _ in range(rng.integers(1, 5)):
            top = float(np.exp(rng.uniform(np.log(CONTEXT_TOP_MIN), np.log(16.0))))
            plant_context_neuron(k, None, top, float(rng.uniform(0.08, 0.2)))
    for _ in range(3):  # contrast neurons: topic a present and topic b absent (cf. colour/color)
        a, b = (int(x) for x in rng.choice(voiced, size=2, replace=False))
        plant_context_neuron(a, b, float(rng.uniform(6, 12)), float(rng.uniform(0.08, 0.2)))
    # A glitch token is short, so LN1 scales it up more than an ordinary token; in units
    # of an ordinary token's alpha its glitch direction weighs:
    glitch_alpha = 0.8 * GLITCH_NORM / TOKEN_NORM * math.hypot(TOKEN_NORM, POS_NORM) / math.hypot(GLITCH_NORM, POS_NORM)
    for _ in range(2):  # fire only through glitch tokens, which text never contains
        j = order.pop()
        top = float(rng.uniform(8, 14))
        W_in[:, j] = top / (glitch_alpha * per_alpha) * u[:, K] + 0.05 * _unit(own @ randn(own.shape[1]))
        b_in[j] = -top / 2
        truth["glitch_neurons"].append({"neuron": j, "top": top})
    for k in rng.choice(K, size=12, replace=False).tolist():  # read the current token's topic directly
        j = order.pop()
        W_in[:, j] = 4.0 / (ln1 * g_norm * 0.75) * g[:, k]
        b_in[j] = -2.0
        truth["topic_token_neurons"].append({"neuron": j, "topic": k})
    candidates = torch.from_numpy(np.flatnonzero(group != _GLITCH)[: -1])
    for t in candidates[torch.randperm(len(candidates), generator=gen)[:150]].tolist():
        j = order.pop()
        W_in[:, j] = 4.0 / (ln1 * TOKEN_NORM) * W_E[t] / norm[t]
        b_in[j] = -2.0
        truth["token_neurons"].append({"neuron": j, "token_id": t})
    # Noise: a random direction (pre-activation std ~1) and a weak random reading of the
    # topic outputs, std NOISE_TOPIC_READ per topic in designed-top units: the largest of
    # ~3000 neurons x 25 such readings is ~4.3 std ~ 2.6 (NOISE_TOP_CEILING), and most are
    # ~1-2: the low-threshold false positives.
    noise = torch.tensor(sorted(order))
    W_in[:, noise] = _unit(basis @ randn(d - 1, len(noise))) / ln1 + u @ randn(K + 1, len(noise)) * (NOISE_TOPIC_READ / (0.75 * per_alpha))
    b_in[noise] = torch.from_numpy(rng.normal(-1.0, 0.5, size=len(noise)))
    truth["noise_neurons"] = noise.tolist()
    W_out = randn(M, d) @ basis @ basis.T * 0.02
    # Context neurons also write their topic's direction g_k: through the tied unembedding
    # (W_U = W_E) they promote their topic's words, as Neo et al.'s "next-token neurons" promote
    # the tokens their context predicts. g_k's logit for a topic word, alpha * |W_E| ~ 1.9 per
    # unit of CONTEXT_WRITE, stands far above the random part's (std ~0.07).
    for planted in truth["context_neurons"]:
        W_out[planted["neuron"]] += CONTEXT_WRITE * g[:, planted["topic"]]

    weights = dict(W_E=W_E, W_pos=W_pos, W_Q=W_Q, b_Q=b_Q, W_K=W_K, b_K=b_K, W_V=W_V, b_V=b_V, W_O=W_O, W_in=W_in, b_in=b_in, W_out=W_out)
    cos = _unit(W_E[ordinary].T).T @ _unit(W_pos.T)  # [ordinary tokens, N]
    x_norm = (W_E[ordinary][:, None] + W_pos[None, ::64]).norm(dim=-1)  # LN1's scale is |x| / sqrt(d)
    truth.update(
        realism={
            "norm_spread": NORM_SPREAD,
            "pos_overlap": POS_OVERLAP,
            "token_norm_quantiles_5_50_95": norm[ordinary].quantile(torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist(),
            "mean_abs_cos_token_pos": float(cos.abs().mean()),
            "max_abs_cos_token_pos": float(cos.abs().max()),
            "ln1_scale_relative_std": float(x_norm.std() / x_norm.mean()),
        },
        heads={name: [h for h in range(H) if qk_kind[h] == name] for name in HEAD_KINDS},
        head_kind=qk_kind,
        control=control,
        decay_per_token=lam,
        silent_topics=sorted(silent.tolist()),
        context_top_min=CONTEXT_TOP_MIN,
        noise_top_ceiling=NOISE_TOP_CEILING,
    )
    return weights, truth


# ---------------------------------------------------------------- the model directory


def _hf_state(weights: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of the Hugging Face model's ``state``, as GPT-2 tensors (Conv1D layout: weight [in, out]) from TransformerLens-layout
    weights; LayerNorms are identity (weight 1, bias 0), so folding changes nothing."""
    w = {k: v.float() for k, v in weights.items()}
    d, H, e = D_MODEL, N_HEADS, D_HEAD
    heads_to_cols = lambda W: W.permute(1, 0, 2).reshape(d, H * e)  # noqa: E731
    out = {name: torch.zeros(t.shape) for name, t in state.items()}
    out.update({name: torch.ones(t.shape) for name, t in state.items() if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))})
    p = "transformer.h.0."
    out.update({
        "transformer.wte.weight": w["W_E"],
        "transformer.wpe.weight": w["W_pos"],
        p + "attn.c_attn.weight": torch.cat([heads_to_cols(w[k]) for k in ("W_Q", "W_K", "W_V")], dim=1),
        p + "attn.c_attn.bias": torch.cat([w[k].flatten() for k in ("b_Q", "b_K", "b_V")]),
        p + "attn.c_proj.weight": w["W_O"].reshape(H * e, d),
        p + "mlp.c_fc.weight": w["W_in"],
        p + "mlp.c_fc.bias": w["b_in"],
        p + "mlp.c_proj.weight": w["W_out"],
    })
    if "lm_head.weight" in out:
        out["lm_head.weight"] = w["W_E"]
    return out


def build_model(path: Path, seed: int = 0, control: bool = False) -> Path:
    """Write the toy model (config, safetensors weights, tokenizer, ground truth) to ``path``.

    Deterministic in ``seed``; the vocabulary is the same for every seed. ``control``
    writes the negative control instead (see ``_weights``): the same model with its
    slowly decaying heads made local. The ground truth (ground_truth.json) holds:

    - control: whether this is the control; heads: {'slow', 'local', 'uniform'} -> head
      indices (the control has no slow head; SLOW_HEADS are its heads made local); head_kind [H];
      decay_per_token [H]: lambda, the kernel is exp(-lambda (n - i)) up to content
      (for the query ' the'; a query token whose LN1 scale is x% larger decays x% faster);
    - topics [K]: name, words, token_ids (spaced and bare forms); silent_topics: topics
      no neuron reads; calibration_topics: the only topics in :func:`calibration_text`;
    - context_neurons: neuron, topic (it reads that topic, and its output weights write the
      topic's direction, so through the tied unembedding it promotes the topic's words),
      against (a topic whose presence it subtracts, or None), top (its designed largest contribution, for an alpha=0.75 word taking all
      the attention with exp(s)/D = 1; the method's statistic comes out somewhat higher
      because function words take less attention), need (the attention share of such
      words needed to fire); context_top_min (the smallest designed top) and
      noise_top_ceiling (the noise neurons' designed largest contribution, see _weights);
    - glitch_neurons (neuron, top), driven only by glitch_token_ids, which no text holds;
      topic_token_neurons (neuron, topic) and token_neurons (neuron, token_id): read the
      current token directly, so the contextual circuit gives them nothing;
      noise_neurons: the rest;
    - function_token_ids, generic_token_ids, the_token_id, token_norm (the median),
      pos_norm;
    - realism: norm_spread (sigma of log |W_E[t]|), pos_overlap (share of |W_E[t]| in the
      positional subspace), and what they give: token_norm_quantiles_5_50_95,
      mean_abs_cos_token_pos and max_abs_cos_token_pos (over ordinary tokens and all
      positions), ln1_scale_relative_std (over ordinary tokens and positions).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    config = GPT2Config(
        vocab_size=len(tok), n_positions=N_CTX, n_embd=D_MODEL, n_layer=1, n_head=N_HEADS,
        activation_function="gelu_new", layer_norm_epsilon=1e-5,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    weights, truth = _weights(seed, control)
    model = GPT2LMHeadModel(config)
    model.load_state_dict(_hf_state(weights, model.state_dict()))
    model.save_pretrained(path)
    tok.save_pretrained(path)

    vocab = vocabulary()
    truth.update(
        version=VERSION,
        seed=seed,
        topics=[{"name": f"topic-{k:02d}", "words": list(words), "token_ids": vocab.ids(words)} for k, words in enumerate(vocab.topic_words)],
        function_token_ids=vocab.ids(vocab.function_words) + [vocab.index[p] for p in PUNCTUATION],
        generic_token_ids=vocab.ids(vocab.generic_words),
        glitch_token_ids=vocab.ids(vocab.glitch_words),
        the_token_id=vocab.index["Ġthe"],
        calibration_topics=list(CALIBRATION_TOPICS),
        token_norm=TOKEN_NORM,
        pos_norm=POS_NORM,
    )
    (path / GROUND_TRUTH_FILE).write_text(json.dumps(truth, indent=1))
    (path / STAMP_FILE).write_text(_version(control))
    return path


def default_root() -> Path:
    """$CTXN_CACHE, else ~/.cache/ctxneurons: where :func:`ensure_model` builds the toy."""
    return Path(os.environ.get("CTXN_CACHE") or Path.home() / ".cache" / "ctxneurons")


def _version(control: bool) -> str:
    return f"{VERSION}-control" if control else VERSION


def _is_current(path: Path, control: bool = False) -> bool:
    stamp = path / STAMP_FILE
    return stamp.is_file() and stamp.read_text().strip() == _version(control)


def ensure_model(root: Path | None = None, control: bool = False) -> Path:
    """The toy model's directory ``root/VERSION`` (root: $CTXN_CACHE, else ~/.cache/ctxneurons),
    built on first use or when its version stamp is stale; with ``control``, the negative
    control's ``root/VERSION-control``.

    The build happens in a temporary sibling that is renamed into place, so a reader
    never sees a half-written model and concurrent builders agree on one result.
    """
    root = Path(root) if root is not None else default_root()
    target = root / _version(control)
    if _is_current(target, control):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-build-", dir=root))
    try:
        if control:
            build_model(tmp, control=True)
        else:
            build_model(tmp)
        if target.exists() and not _is_current(target, control):
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}-stale-", dir=root))
            target.rename(stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not _is_current(target, control):  # another process won the race with a current build
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ground_truth(model_dir: str | os.PathLike) -> dict:
    """The planted structure saved with a toy model (see :func:`build_model`)."""
    return json.loads((Path(model_dir) / GROUND_TRUTH_FILE).read_text())


def planted_categories(truth: dict, n_vocab: int) -> list[str]:
    """The category each token id [V] has by construction: 'topic-KK' for a topic's words
    (both forms), 'function' for function words and punctuation (they share a planted
    embedding direction), 'glitch' for glitch tokens, and a category of its own ('token-ID')
    for every other token (generic words share nothing)."""
    labels = [f"token-{t}" for t in range(n_vocab)]
    for topic in truth["topics"]:
        for t in topic["token_ids"]:
            labels[t] = topic["name"]
    for key, name in (("function_token_ids", "function"), ("glitch_token_ids", "glitch")):
        for t in truth[key]:
            labels[t] = name
    return labels
