"""A planted-circuit GPT-2: ground truth for the method, and the offline edition of the book.

The toy model has GPT-2 Small's layer-0 geometry (d_model 768, 12 heads of d_head 64,
d_mlp 3072, n_ctx 1024). Layer 0 is the paper's ground truth; a second layer
(:mod:`~ctxneurons.toy.layer1`) is chapter 10's. Its vocabulary is synthetic words in topic
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

The package has one module per part: :mod:`~ctxneurons.toy.vocabulary` (words and
tokenizer), :mod:`~ctxneurons.toy.documents` (the corpus), :mod:`~ctxneurons.toy.weights`
(layer 0, one function per planted part), :mod:`~ctxneurons.toy.model` (the model's folder)
and :mod:`~ctxneurons.toy.truth` (what is planted, and the scores against it). Their public
names are all importable from ``ctxneurons.toy``.
"""

# The public names of every module, so that callers need only ``from ctxneurons import toy``.
from ctxneurons.toy.documents import (
    CALIBRATION_TOPICS, DOMAINS, THE_SHARE, calibration_text, documents, domain_documents,
)
from ctxneurons.toy.model import STAMP_FILE, VERSION, build_model, default_root, ensure_model
from ctxneurons.toy.truth import (
    CONTEXT_TOP_MIN, GROUND_TRUTH_FILE, HEAD_KINDS, NOISE_TOP_CEILING, NOISE_TOPIC_READ, SLOW_HEADS,
    ground_truth, planted_categories,
)
from ctxneurons.toy.vocabulary import (
    EOT, FUNCTION_WORDS, N_CTX, N_GENERIC, N_GLITCH, N_TOPICS, PUNCTUATION, VOCAB_SEED, WORDS_PER_TOPIC,
    Vocabulary, tokenizer, vocabulary,
)
from ctxneurons.toy.weights import (
    CONTEXT_WRITE, D_HEAD, D_MLP, D_MODEL, GLITCH_NORM, N_HEADS, NORM_SPREAD, POS_NORM, POS_OVERLAP, TOKEN_NORM,
)
