"""Which model a run uses: 'auto' resolved once (it may probe the network), and how pages name it.

Kept apart from the run so that ``ctxneurons edition`` and the CLI's help need neither
torch nor a model.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)



def resolve_model_choice(model: str) -> tuple[str, bool]:
    """'auto' -> ('gpt2', False) where GPT-2 can be had, else ('toy', True).

    A book build resolves 'auto' once and passes the answer to every chapter as
    CTXN_MODEL (and CTXN_OFFLINE_FALLBACK=1 for the fallback), so that all chapters of
    one build use the same model even if the network comes and goes.
    """
    if model != "auto":
        return model, model == "toy" and os.environ.get("CTXN_OFFLINE_FALLBACK") == "1"
    from ctxneurons.io import hub

    GPT2_REPO = hub.HUB_ALIASES["gpt2"]
    if hub.cached_snapshot(GPT2_REPO, allow_patterns=["config.json"]) is not None or hub.reachable(GPT2_REPO):
        return "gpt2", False
    log.warning("GPT-2 (%s) is not cached and the hub at %s cannot be reached: falling back to the offline toy model",
                GPT2_REPO, hub.endpoint())
    return "toy", True


def model_label(w, model: str) -> str:
    """How pages name the model (w: its Layer0): what it is, and for hub models the commit its weights came from."""
    from ctxneurons.io.model import TOY_CONTROL, is_toy  # w is loaded: torch is already in

    if is_toy(model):
        control = " negative control: its slow heads made local" if model == TOY_CONTROL else ""
        return f"toy{control} (planted-circuit GPT-2, offline)"
    name = "GPT-2 Small" if w.paper_model else model
    where = [] if name == model else [model]
    if w.revision:
        where.append(f"revision {w.revision[:12]}")
    return f"{name} ({', '.join(where)})" if where else name
