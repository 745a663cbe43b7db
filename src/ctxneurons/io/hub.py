"""The Hugging Face hub, reached exactly the way ``huggingface_hub`` reaches it.

Every network call goes through ``huggingface_hub`` itself, so the endpoint
(``HF_ENDPOINT``: a mirror), the proxies (``HTTPS_PROXY``), the token (``HF_TOKEN``) and the
offline flags (``HF_HUB_OFFLINE``) are honoured as the hub client honours them. Calls get a
short timeout and are made once: a run that cannot reach the hub fails within seconds with a
:class:`HubError` that says what was tried and what to do, instead of retrying.

What is already in the local cache is used with no network call at all: a model snapshot,
and a dataset's chosen data files with the small manifest (revision and file list) that
:func:`dataset_files` writes beside the hub's cache the first time.

Datasets are read from whole data files, never streamed: a few shards picked by the seed
are downloaded into the hub's cache (so a rerun works offline), whatever the repository's
layout on the day:

- data files at its main revision (Parquet, JSON Lines), resolved to splits by ``datasets``
  (the ``configs:`` of its README, or the hub's file-name conventions);
- only a loading script at main (which ``datasets`` 5 refuses) and the hub's automatic
  Parquet conversion beside it, on the ref ``refs/convert/parquet``
  (``<config>/<split>/NNNN.parquet`` or ``<config>/partial-<split>/NNNN.parquet``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ctxneurons.errors import InputError

# Short names of hub models, as users type them (io/model.py resolves them).
HUB_ALIASES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
    "gpt-neo-125M": "EleutherAI/gpt-neo-125M",
}

TIMEOUT = 10.0  # seconds for one metadata call; a hub answers in well under one
MODEL_FILES = ["config.json", "*.safetensors", "tokenizer*", "vocab.json", "merges.txt", "generation_config.json"]
DATA_SUFFIXES = (".parquet", ".jsonl")
_TRUE = ("1", "ON", "YES", "TRUE")


class HubError(InputError, RuntimeError):
    """A hub repository, revision or file could not be had; the message says what to do."""


class HubUnreachable(HubError):
    """The endpoint did not answer (network, proxy, DNS or offline mode)."""


def endpoint() -> str:
    """The endpoint huggingface_hub uses now (``HF_ENDPOINT``, read when it was imported)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE``) asks for no network."""
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE") or "").upper()
    return bool(constants.HF_HUB_OFFLINE) or env in _TRUE


def _where() -> str:
    https = endpoint().startswith("https:")
    names = ("HTTPS_PROXY", "https_proxy") if https else ("HTTP_PROXY", "http_proxy")
    proxy = next((os.environ[n] for n in names if os.environ.get(n)), None)
    return f"{endpoint()}" + (f" through proxy {proxy}" if proxy else "")


def _unreachable(what: str, err: Exception | None) -> HubUnreachable:
    why = "offline mode is set (HF_HUB_OFFLINE)" if err is None else f"{type(err).__name__}: {err}"
    return HubUnreachable(
        f"{what} is not in the local Hugging Face cache ({_cache_dir()}) and the hub at {_where()} "
        f"cannot be reached ({why}). Check the network, HF_ENDPOINT (a mirror) and HTTPS_PROXY; or "
        "fetch it once on a machine with a network (`ctxneurons prefetch`, see the README) and copy "
        "its HF_HOME here."
    )


def _cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _call(what: str, fn, *args, **kwargs):
    """One hub call, its failures turned into HubErrors that name ``what``."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if offline():
        raise _unreachable(what, None)
    try:
        return fn(*args, **kwargs)
    except GatedRepoError as err:
        raise HubError(f"{what} at {endpoint()} is gated: accept its terms on the hub and set HF_TOKEN. ({err})") from None
    except RevisionNotFoundError:
        raise HubError(f"{what}: no such revision at {endpoint()}. Check the revision (branch, tag or commit).") from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{what}: no such repository at {endpoint()} (or it is private: set HF_TOKEN). "
            "Check the name, and that HF_ENDPOINT points at a hub that serves it."
        ) from None
    except LocalEntryNotFoundError as err:  # the hub client's word for "no network and not cached"
        raise _unreachable(what, err) from None
    except EntryNotFoundError as err:
        raise HubError(f"{what}: file not found at {endpoint()}: {err}") from None
    except OfflineModeIsEnabled as err:
        raise _unreachable(what, err) from None
    except HfHubHTTPError as err:
        raise HubError(f"{what}: the hub at {endpoint()} answered with an error: {err}") from None
    except (OSError, ConnectionError) as err:  # httpx transport errors, DNS, refused, timeouts
        raise _unreachable(what, err) from None
    except Exception as err:
        if type(err).__module__.startswith(("httpx", "httpcore")):
            raise _unreachable(what, err) from None
        raise


def resolve_revision(repo: str, repo_type: str = "model", revision: str = "main") -> str:
    """The commit sha of ``revision`` (a branch, tag, sha or ``refs/convert/...`` ref)."""
    from huggingface_hub import HfApi

    api = HfApi()
    what = f"{repo_type} {repo} (revision {revision})"
    if revision.startswith("refs/convert/"):
        # Asked for by name, such refs are not served by every hub mirror; the refs list is.
        refs = _call(what, api.list_repo_refs, repo, repo_type=repo_type)
        for ref in refs.converts:
            if ref.ref == revision:
                return ref.target_commit
        raise HubError(f"{what}: the repository has no {revision} (its converts: {[r.ref for r in refs.converts]}).")
    return _call(what, api.repo_info, repo, repo_type=repo_type, revision=revision, timeout=TIMEOUT).sha


def reachable(repo: str, repo_type: str = "model") -> bool:
    """Whether ``repo`` can be had from the hub now (one short call, no retries)."""
    try:
        resolve_revision(repo, repo_type)
        return True
    except HubError:
        return False


def cached_snapshot(repo: str, repo_type: str = "model", revision: str = "main", allow_patterns=None) -> Path | None:
    """The local snapshot folder of ``repo`` at ``revision`` when the cache holds it, else None."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns,
                                 local_files_only=True)
    except Exception:
        return None
    return Path(path)


def model_snapshot(repo: str, revision: str = "main") -> tuple[Path, str]:
    """(local folder, commit sha) of a model repo: from the cache with no network call when
    it is there, else downloaded (only the config, weights and tokenizer files)."""
    from huggingface_hub import snapshot_download

    cached = cached_snapshot(repo, "model", revision, MODEL_FILES)
    if cached is not None and (cached / "config.json").is_file():
        return cached, cached.name
    resolve_revision(repo, "model", revision)  # one short call: a clear error when unreachable or absent
    # By the revision's name, not its sha: then the cache records which commit the name meant,
    # and an offline rerun finds it by the same name.
    what = f"model {repo} (revision {revision})"
    path = Path(_call(what, snapshot_download, repo, revision=revision, allow_patterns=MODEL_FILES, etag_timeout=TIMEOUT))
    return path, path.name


# -- datasets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetFiles:
    """The data files of one split of a hub dataset, pinned to a commit.

    repo, config, split: what was asked for; revision: the commit sha the files are read at;
    layout: 'main' (data files at the main revision) or 'parquet-conversion'
    (refs/convert/parquet); files: repo paths in sorted order.
    """

    repo: str
    config: str | None
    split: str
    revision: str
    layout: str
    files: tuple[str, ...]


def _manifest_path(repo: str, config: str | None, split: str, revision: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "--", f"{repo}--{config or 'default'}--{split}--{revision}")
    return _cache_dir() / "ctxneurons-manifests" / f"{safe}.json"


def _files_at_main(repo: str, config: str | None, split: str, sha: str) -> list[str] | None:
    """Data files of ``split`` at commit ``sha`` as ``datasets`` resolves them; None when the
    repository holds a loading script instead of data files."""
    import datasets

    what = f"dataset {repo} (config {config}, revision {sha[:12]})"
    try:
        builder = _call(what, datasets.load_dataset_builder, repo, config, revision=sha)
    except HubError:
        raise
    except RuntimeError as err:
        if "scripts are no longer supported" in str(err):
            return None
        raise HubError(f"{what}: datasets cannot read it: {err}") from None
    except ValueError as err:  # unknown config, among others
        raise HubError(f"{what}: {err}") from None
    data_files = builder.config.data_files or {}
    if split not in data_files:
        raise HubError(f"{what} has no split {split!r}; its splits: {sorted(data_files)}.")
    prefix = re.compile(rf"^hf://datasets/{re.escape(repo)}@[^/]+/")
    return sorted(prefix.sub("", str(f)) for f in data_files[split])


def _files_in_conversion(paths: list[str], config: str | None, split: str) -> tuple[str | None, list[str]]:
    configs = sorted({p.split("/", 1)[0] for p in paths if "/" in p})
    if config is None:
        config = "default" if "default" in configs else configs[0] if len(configs) == 1 else None
    if config is None or config not in configs:
        return config, []
    pattern = re.compile(rf"^{re.escape(config)}/(({re.escape(split)}|partial-{re.escape(split)})/[^/]+|[^/]*-{re.escape(split)}([-.][^/]*)?)\.parquet$")
    return config, sorted(p for p in paths if pattern.match(p))


def dataset_files(repo: str, config: str | None = None, split: str = "train", revision: str = "main") -> DatasetFiles:
    """Which files hold ``split`` of a hub dataset, at which commit (see the module docstring).

    The answer is kept in a manifest in the hub's cache, so later calls (and offline runs)
    need no network."""
    from huggingface_hub import HfApi

    manifest = _manifest_path(repo, config, split, revision)
    if manifest.is_file():
        try:
            saved = json.loads(manifest.read_text())
            return DatasetFiles(**{**saved, "files": tuple(saved["files"])})
        except (OSError, ValueError, TypeError, KeyError):
            pass  # unreadable: ask the hub again
    tried = []
    sha = resolve_revision(repo, "dataset", revision)
    tried.append(f"{revision} ({sha[:12]})")
    files = _files_at_main(repo, config, split, sha)
    layout = "main"
    if files is None and revision == "main":
        layout = "parquet-conversion"
        try:
            sha = resolve_revision(repo, "dataset", "refs/convert/parquet")
        except HubUnreachable:
            raise
        except HubError:
            sha = None
        tried.append("refs/convert/parquet" + (f" ({sha[:12]})" if sha else " (absent)"))
        if sha is not None:
            paths = _call(f"dataset {repo} at refs/convert/parquet", HfApi().list_repo_files, repo, repo_type="dataset", revision=sha)
            config, files = _files_in_conversion(list(paths), config, split)
    files = [f for f in (files or []) if f.endswith(DATA_SUFFIXES)]
    if not files:
        raise HubError(
            f"dataset {repo} (config {config}, split {split!r}) has no readable data files at the revisions "
            f"tried: {', '.join(tried)} at {endpoint()}. It may hold only a loading script, which datasets 5 "
            "no longer runs, with no Parquet conversion yet."
        )
    out = DatasetFiles(repo=repo, config=config, split=split, revision=sha, layout=layout, files=tuple(files))
    from ctxneurons.io.atomic import atomic_write_json

    # A unique temporary name per writer: two processes listing one dataset never share one.
    atomic_write_json(manifest, asdict(out))
    return out


def download_file(repo: str, path: str, revision: str, repo_type: str = "dataset") -> Path:
    """One whole file of a repo at a pinned commit, from the cache when it is there."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, path, repo_type=repo_type, revision=revision, local_files_only=True))
    except Exception:
        pass
    what = f"{repo_type} {repo}: file {path} (revision {revision[:12]})"
    return Path(_call(what, hf_hub_download, repo, path, repo_type=repo_type, revision=revision, etag_timeout=TIMEOUT))


def read_texts(path: Path, column: str = "text") -> list[str]:
    """The ``column`` of a downloaded Parquet or JSON Lines data file, as a list of strings."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        if column not in schema.names:
            raise HubError(f"data file {path.name} has no column {column!r}; its columns: {schema.names}. "
                           "Name the text column in the corpus string (hf:REPO:CONFIG:SPLIT:COLUMN).")
        return [t if isinstance(t, str) else "" for t in pq.read_table(path, columns=[column]).column(column).to_pylist()]
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                if column not in record:
                    raise HubError(f"data file {path.name} has no field {column!r}; its fields: {sorted(record)}. "
                                   "Name the text column in the corpus string (hf:REPO:CONFIG:SPLIT:COLUMN).")
                texts.append(record[column] if isinstance(record[column], str) else "")
    return texts
