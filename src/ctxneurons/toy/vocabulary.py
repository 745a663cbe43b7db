"""The toy's vocabulary and tokenizer: synthetic words in topic groups, generic words,
English function words and glitch strings. Fixed (it does not depend on the model seed),
so every toy model tokenises every toy text without unknown tokens."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

EOT = "<|endoftext|>"
N_CTX = 1024  # GPT-2 Small's context, the tokenizer's model_max_length
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
PUNCTUATION = (".", ",")


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
    """The one toy vocabulary (cached: it is fixed)."""
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
