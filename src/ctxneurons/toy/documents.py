"""The toy corpus: documents that mix a few topics with function words and punctuation,
the domains beside them, and the calibration text. Deterministic, and independent of the
model seed (tests/test_toy_documents.py pins the bytes)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ctxneurons.toy.vocabulary import FUNCTION_WORDS, N_GENERIC, N_TOPICS, VOCAB_SEED, WORDS_PER_TOPIC, vocabulary

THE_SHARE = 0.2  # of function-word tokens; ' the' is then ~8% of all tokens, as in English
CALIBRATION_TOPICS = (0, 3, 7, 12, 16)
MIXED_FUNCTION_RATE = (0.34, 0.5)  # range of a mixed document's function-word rate


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


def _mixture(rng: np.random.Generator, pool, p_function: tuple[float, float], n_tokens: int) -> str:
    """One document: 1-3 topics of ``pool`` with Dirichlet weights, and a function-word
    rate drawn uniformly from the range ``p_function``."""
    n_topics = rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25])
    topics = rng.choice(np.asarray(pool), size=n_topics, replace=False)
    weights = rng.dirichlet(np.full(n_topics, 2.0))
    return _generate(rng, n_tokens, topics, weights, p_function=rng.uniform(*p_function))


def documents(n: int, seed: int = 0, min_tokens: int = 1100) -> list[str]:
    """``n`` toy documents of exactly ``min_tokens`` tokens each (no BOS), deterministic.

    Document k depends only on (seed, k), so a longer list extends a shorter one. Each
    mixes 1-3 topics (Dirichlet weights) with words drawn i.i.d., and a function-word
    rate that varies between documents (the paper's stop-word-density effect).
    """
    return [_mixture(np.random.default_rng([seed, k, VOCAB_SEED]), range(N_TOPICS), MIXED_FUNCTION_RATE, min_tokens) for k in range(n)]


# Domains beside the mixed corpus: each draws its documents' topics from one group of
# topics only, or (terse) keeps the mixed topics but writes far fewer function words, the
# way lists, headlines or code do. name -> (topic pool, range of the function-word rate).
DOMAINS: dict[str, tuple[tuple[int, ...], tuple[float, float]]] = {
    "topics-a": (tuple(range(0, 8)), MIXED_FUNCTION_RATE),
    "topics-b": (tuple(range(8, 16)), MIXED_FUNCTION_RATE),
    "topics-c": (tuple(range(16, 24)), MIXED_FUNCTION_RATE),
    "terse": (tuple(range(N_TOPICS)), (0.08, 0.14)),
}


def domain_documents(domain: str, n: int, seed: int = 0, min_tokens: int = 1100) -> list[str]:
    """``n`` documents of the toy domain ``domain`` (a key of DOMAINS), made as
    :func:`documents` makes its own but with the domain's topic pool and function-word
    rate, and seeded apart from them and from every other domain's."""
    if domain not in DOMAINS:
        raise ValueError(f"toy domain {domain!r} does not exist; the toy domains are {', '.join(DOMAINS)}")
    pool, p_function = DOMAINS[domain]
    salt = 1 + list(DOMAINS).index(domain)
    return [_mixture(np.random.default_rng([seed, k, VOCAB_SEED, salt]), pool, p_function, min_tokens) for k in range(n)]


def calibration_text() -> str:
    """The designated calibration text: 1100 tokens of mixed content over
    CALIBRATION_TOPICS only, so neurons of the other topics never fire on it."""
    rng = np.random.default_rng([VOCAB_SEED, 1])
    topics = np.array(CALIBRATION_TOPICS)
    weights = np.full(len(topics), 1.0 / len(topics))
    return _generate(rng, 1100, topics, weights, p_function=0.42)
