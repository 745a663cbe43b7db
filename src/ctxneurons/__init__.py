"""ctxneurons: the method of Gibson (2025), *Decomposing Attention To Find Context-Sensitive
Neurons*, on layer 0 of GPT-2-shaped models.

One module per concept of the paper: ``model`` (loading), ``layer0`` (the true forward),
``corpus``, ``decomposition`` (§1), ``kernels`` (§2), ``denominators`` (§3), ``circuit``,
``neurons`` and ``evaluation`` (§4); ``toy`` is the planted-circuit model; ``experiment``,
``outputs``, ``cache``, ``figures`` and ``batch`` are the notebook and I/O edges.
"""

__version__ = "0.1.0"
