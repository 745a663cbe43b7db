"""The tests' real data (the GPT-2 tokenizer files and a sample of real web text), fetched
from the hub through the library's own hub code where ../shared/data is absent, e.g. on
GitHub's hosted runners for a contributor's pull request."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

N_TEXTS = 1408  # as many as ../shared/data holds


def fetch(dest: Path, n_texts: int = N_TEXTS) -> Path:
    """Write ``gpt2-tokenizer/{vocab.json,merges.txt}`` and ``webtext-sample.jsonl`` into ``dest``."""
    from ctxneurons.io import corpus, hub
    from ctxneurons.io.model import HUB_ALIASES

    repo = HUB_ALIASES["gpt2"]
    sha = hub.resolve_revision(repo)
    (dest / "gpt2-tokenizer").mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(hub.download_file(repo, name, sha, repo_type="model"), dest / "gpt2-tokenizer" / name)
    texts, _, _ = corpus._hub_candidates("openwebtext", seed=0, pool_size=n_texts)
    tmp = dest / "webtext-sample.jsonl.tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps({"text": text}) + "\n" for _, text in texts)
    tmp.replace(dest / "webtext-sample.jsonl")  # last: its presence marks a complete fetch
    return dest
