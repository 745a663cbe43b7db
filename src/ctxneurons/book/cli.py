"""Command line: ``ctxneurons discover`` finds context-sensitive neurons from the weights and
one calibration text; ``ctxneurons batch`` runs notebooks over a parameter grid with papermill.

Examples::

    ctxneurons discover --model gpt2 --calibration-text my_text.txt --out neurons.csv
    ctxneurons discover --model toy --threshold 4 --out neurons.json

    ctxneurons batch --set model=gpt2 --set n_texts=1000 --set device=cuda
    ctxneurons batch 04 05 --grid calibration_text=legal.txt,fiction.txt,news.txt
    ctxneurons batch --grid model=gpt2,toy --out runs/models
    ctxneurons batch 04 --grid 'heads=[[0,2,6,8,9,10],[0,2,6]]'
    ctxneurons batch 04 05 --grid seed=0,1,2,3 --shard 2/4 --out runs/shard-2   # one of 4 machines
    ctxneurons batch merge runs/shard-* --out runs/merged
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ctxneurons.book import batch
from ctxneurons.book.edition import resolve_model_choice
from ctxneurons.book.params import PARAMETERS, ParameterError, check_output_file, check_writable_dir, validate
from ctxneurons.errors import InputError, PremiseFails

DEBUG_ENV = "CTXN_DEBUG"


RULE_TEXTS = 64  # texts over which `discover --heads auto` measures each head's denominator

def _split_assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name.strip(), value


def _shard(text: str) -> tuple[int, int]:
    try:
        return batch.parse_shard(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def merge_main(argv: list[str]) -> int:
    """``ctxneurons batch merge``; returns the exit status."""
    m = argparse.ArgumentParser(
        prog="ctxneurons batch merge",
        description="Combine the finished runs of several batch folders (e.g. one per --shard) into one runs "
                    "folder and rebuild its summary.csv. A run found twice is kept once if its headline numbers "
                    "agree; if they disagree nothing is merged and the differences are listed. Unfinished runs "
                    "(.partial, .failed) are reported, not merged.")
    m.add_argument("folders", nargs="+", type=Path, help="batch folders (the --out of each shard)")
    m.add_argument("--out", type=Path, required=True, help="the merged runs folder (created, or added to)")
    args = m.parse_args(argv)
    check_writable_dir(args.out, "--out")
    report = batch.merge(args.folders, args.out)
    if report.unfinished:
        print(f"{len(report.unfinished)} unfinished run(s) were not merged (listed above); rerun their shard to finish them",
              file=sys.stderr)
    return 0


DISCOVER_HELP = """\
Find context-sensitive neurons the way Gibson (2025), "Decomposing Attention To Find
Context-Sensitive Neurons", does: from the model's weights and one calibration text alone.
The slowly decaying layer-0 heads are given one shared positional kernel and the softmax
denominators sampled once from the calibration text; their combined output is then linear in
the bag of recent tokens, and projecting it on each MLP neuron j's input weights gives
contribution[j, t], what one occurrence of token t in the context adds to j's pre-activation.
A neuron is found when top[j], its largest contribution over non-glitch tokens, reaches the
threshold. Nothing looks at activations, so neurons that never fired on the calibration text
are found too. Prints the found neurons, strongest first, with top[j] and the tokens with the
most positive and most negative contributions; --out also writes them."""


def discover_main(argv: list[str]) -> int:
    """``ctxneurons discover``; returns the exit status."""
    import time

    from tqdm import tqdm

    from ctxneurons.io.atomic import atomic_write_csv, atomic_write_json

    d = argparse.ArgumentParser(prog="ctxneurons discover", description=DISCOVER_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--model", default="auto", help=f"the model: {PARAMETERS['model'][1]}. The paper: GPT-2 Small ('gpt2')")
    d.add_argument("--calibration-text", metavar="FILE|TEXT", default=None,
                   help="the calibration text whose softmax denominators stand in for every text's: a text file, or the "
                        "text itself. Prose works as a general calibration text; a domain-specific analysis wants one "
                        "of that domain. Default: the book's choice (a corpus text drawn with --seed; toy: its own)")
    d.add_argument("--heads", default="0,2,6,8,9,10",
                   help="the contextual circuit's heads: the slowly decaying layer-0 heads whose kernels are replaced "
                        "by their shared (median) kernel. The paper: 0,2,6,8,9,10 of GPT-2 Small (default). 'auto': "
                        f"the stable-heads rule's pick, its denominators measured on {RULE_TEXTS} corpus texts (exit "
                        "status 3 when it picks none: the circuit's premise fails for the model)")
    d.add_argument("--threshold", default="5.0",
                   help="a neuron is found when top[j], its largest contribution over non-glitch tokens, reaches this. "
                        "The paper: about 5.0, giving about 100 neurons; lower finds more, with more false positives")
    d.add_argument("--device", default="auto", help=f"where to compute: {PARAMETERS['device'][1]}")
    d.add_argument("--max-neurons", default="100", help="list at most this many found neurons, strongest first (default 100)")
    d.add_argument("--tokens", type=_positive_int, default=10, help="how many most positive and most negative tokens per neuron (default 10)")
    d.add_argument("--corpus", default="auto", help=f"only without --calibration-text, where it is drawn from: {PARAMETERS['corpus'][1]}")
    d.add_argument("--seed", default="0", help="only without --calibration-text: chooses the corpus text (as the book's seed)")
    d.add_argument("--out", type=Path, help="also write the neurons: a .csv (one row per neuron, sign and rank, with a "
                                            ".meta.json of column meanings and provenance) or a .json")
    args = d.parse_args(argv)
    if args.out is not None:
        if args.out.suffix not in (".csv", ".json"):
            raise ParameterError(f"--out {args.out}: name a .csv or a .json file")
        check_output_file(args.out, "--out")
        if args.out.suffix == ".csv":
            check_output_file(args.out.with_suffix(".meta.json"), "--out")
    raw = {"model": args.model, "corpus": args.corpus, "calibration_text": args.calibration_text, "heads": args.heads,
           "threshold": args.threshold, "device": args.device, "max_neurons": args.max_neurons, "seed": args.seed, "n_texts": 1}
    params = validate(raw)  # every input checked before the model loads
    if params["heads"] == "auto":  # the rule measures each head's denominator across texts
        params = validate({**raw, "n_texts": RULE_TEXTS})
    bar = tqdm(total=4, file=sys.stderr, bar_format="{n_fmt}/{total_fmt} {desc} [{elapsed}]", leave=False, disable=None)
    start = time.time()

    started: list[str] = []

    def step(name: str) -> None:
        if started:  # the previous stage is done
            bar.update(1)
        started.append(name)
        bar.set_description_str(name)

    from ctxneurons.book import discover, experiment

    try:
        step("loading the model")
        run = experiment.open_run("discover", params)
        result = discover.discover(run, params["threshold"], params["max_neurons"], k=args.tokens, step=step)
        bar.update(bar.total - bar.n)
    finally:
        bar.close()
    _print_discovery(run, result, time.time() - start)
    if args.out is not None:
        if args.out.suffix == ".csv":
            atomic_write_csv(args.out, result.table)
            atomic_write_json(args.out.with_suffix(".meta.json"), {"columns": discover.COLUMNS, "rows": len(result.table), **run.provenance})
        else:
            atomic_write_json(args.out, {**run.provenance, "threshold": result.threshold, "n_found": result.n_passed,
                                         "neurons": result.neurons_json()})
        print(f"written to {args.out}")
    return 0


def _print_discovery(run, result, seconds: float) -> None:
    fb = " (offline fallback, not GPT-2)" if run.fallback else ""
    print(f"model: {run.model_label}{fb} · calibration text: {run.calibration.name} (sha256 {run.calibration.sha256[:12]}) · "
          f"heads {list(run.heads)} · device {run.w.device}")
    if result.n_passed:
        print(f"{result.n_passed} neurons reach top[j] >= {result.threshold:g}; listing {len(result.found)}, strongest first "
              f"({seconds:.1f} s)")
    else:
        print(f"no neuron reaches top[j] >= {result.threshold:g} (the largest top[j] is {float(result.top.max()):.4g}); "
              f"listing the {len(result.found)} highest top[j] instead ({seconds:.1f} s)")
    t = result.table
    for j in result.found.tolist():
        rows = t[t["neuron"] == j]
        pos = ", ".join(repr(x) for x in rows[rows["sign"] == "+"]["token"].head(6))
        neg = ", ".join(repr(x) for x in rows[rows["sign"] == "-"]["token"].head(6))
        print(f"neuron {j:5d}  top {float(result.top[j]):7.3f}  + {pos}\n{'':27s}- {neg}")


def prefetch(model: str, corpora: list[str], n_texts: int, seed: int) -> int:
    """Fetch what a run with these settings reads: the model's files and, per corpus, the
    shards holding its test texts and its seeded calibration text (see experiment.Run)."""
    for corpus in corpora:
        validate({"model": model, "corpus": corpus, "n_texts": n_texts, "seed": seed})
    from huggingface_hub import constants

    from ctxneurons.book.texts import CALIBRATION_SEED_OFFSET
    from ctxneurons.io.corpus import select_token_batch
    from ctxneurons.io.model import load_layer0

    w = load_layer0(model, device="cpu")
    print(f"model {model}: revision {w.revision or '(local directory)'}", flush=True)
    for corpus in corpora:
        for n, s in ((n_texts + 1, seed), (1, seed + CALIBRATION_SEED_OFFSET)):
            batch = select_token_batch(corpus, w.tokenizer, n, w.n_ctx, seed=s)
        print(f"corpus {corpus}: {batch.source}", flush=True)
    print(f"cached in {constants.HF_HOME}: copy it to the offline machine and set HF_HOME to it and HF_HUB_OFFLINE=1")
    return 0


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
    return n


def _check_kernel(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        known = ", ".join(sorted(KernelSpecManager().find_kernel_specs())) or "none"
        raise ParameterError(f"--kernel {name!r}: no such Jupyter kernel (installed: {known}); "
                             "install one with `python -m ipykernel install --user` or pass --kernel") from None


def batch_main(args) -> int:
    """``ctxneurons batch``: every input checked, then the runs; returns the exit status (1 if a run failed)."""
    notebooks = batch.find_notebooks(args.notebooks, args.notebook_dir)
    param_sets = batch.expand_grid(batch.parse_set(args.set), batch.parse_grid(args.grid))
    check_writable_dir(args.out, "--out")
    _check_kernel(args.kernel)
    print(f"{len(notebooks)} notebook(s) x {len(param_sets)} parameter set(s) -> {args.out}", flush=True)
    results = batch.run_batch(notebooks, param_sets, args.out, kernel_name=args.kernel, shard_of=args.shard)
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(results)} runs failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['job']}: cell {r.get('cell_index', '?')}, {r.get('ename', r['error'])} -> {r['folder']}", file=sys.stderr)
        return 1
    return 0


def _dispatch(argv: list[str]) -> int:
    if argv[:2] == ["batch", "merge"]:
        return merge_main(argv[2:])
    if argv[:1] == ["discover"]:
        return discover_main(argv[1:])
    parser = argparse.ArgumentParser(prog="ctxneurons", epilog="--debug (or CTXN_DEBUG=1): show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("discover", help="find context-sensitive neurons from the weights and one calibration text "
                                    "(see `ctxneurons discover --help`)")
    b = sub.add_parser("batch", help="run notebooks over a grid of parameters (resumable); `batch merge` combines shards",
                       epilog="ctxneurons batch merge DIR... --out DIR combines the folders of several shards; "
                              "see `ctxneurons batch merge --help`.")
    b.add_argument("notebooks", nargs="*", help="names, numbers or fragments (default: all)")
    b.add_argument("--set", action="append", default=[], type=_split_assignment, metavar="NAME=VALUE",
                   help="a parameter for every run")
    b.add_argument("--grid", action="append", default=[], type=_split_assignment, metavar="NAME=V1,V2,...",
                   help="a parameter to vary; several --grid give their product, and a name given twice gets both lists")
    b.add_argument("--out", type=Path, default=Path("runs"), help="root folder of the runs (default: runs)")
    b.add_argument("--notebook-dir", type=Path, default=batch.NOTEBOOK_DIR, help="where the notebooks are")
    b.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    b.add_argument("--shard", type=_shard, metavar="K/N",
                   help="run only the K-th of N disjoint parts of the grid (1 <= K <= N); the N parts together are "
                        "the whole grid, in any order, on any machines; merge their --out folders with `batch merge`")
    f = sub.add_parser("prefetch", help="download a model and the corpus shards a run needs into the Hugging Face "
                       "cache, for a machine without a network (copy HF_HOME there, set HF_HUB_OFFLINE=1)")
    f.add_argument("--model", default="gpt2", help="hub name (NAME@REVISION pins one) or local directory (default: gpt2)")
    f.add_argument("--corpus", action="append", default=None,
                   help="'openwebtext' (default) or 'hf:ORG/NAME[@REV][:CONFIG[:SPLIT[:COLUMN]]]'; repeat for several")
    f.add_argument("--n-texts", type=_positive_int, default=1000, help="texts per chapter the runs will use (default: 1000)")
    f.add_argument("--seed", type=int, default=0, help="the runs' seed: it picks the shards (default: 0)")
    e = sub.add_parser("edition", help="print the model a build uses: 'gpt2' (or CTXN_MODEL), or 'toy fallback' offline")
    e.add_argument("model", nargs="?", default="auto")
    args = parser.parse_args(argv)
    if args.command == "prefetch":
        return prefetch(args.model, args.corpus or ["openwebtext"], args.n_texts, args.seed)
    if args.command == "edition":
        validate({"model": args.model})
        model, fallback = resolve_model_choice(args.model)
        print(model, "fallback" if fallback else "")
        return 0
    return batch_main(args)


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text if isinstance(err, (InputError, batch.BatchInterrupted)) else f"{type(err).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    """The ``ctxneurons`` command (argv: its arguments, default sys.argv[1:]); returns the exit status.

    Every failure ends in one message on stderr and a non-zero status: 2 for an input
    that cannot be used (the message names it and the fix), 3 when the stable-heads rule
    picks no head (the circuit's premise fails for the model), 130 for Ctrl-C, 1 for
    anything else. ``--debug`` (anywhere) or CTXN_DEBUG=1 shows the traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    prog = "ctxneurons " + (" ".join(argv[:2]) if argv[:2] == ["batch", "merge"] else (argv[:1] or [""])[0])
    # The library warns (e.g. an unusable cache) through logging: one line each, not a traceback.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return _dispatch(argv)
    except SystemExit:
        raise
    except BaseException as err:
        if debug:
            raise
        if isinstance(err, (KeyboardInterrupt, batch.BatchInterrupted)):
            print(f"{prog.strip()}: {_one_line(err) if isinstance(err, batch.BatchInterrupted) else 'interrupted'}", file=sys.stderr)
            return 130
        if isinstance(err, InputError):
            print(f"{prog.strip()}: {_one_line(err)}", file=sys.stderr)
            return 2
        if isinstance(err, PremiseFails):  # the method's answer, not a failure of the command
            print(f"{prog.strip()}: {err}", file=sys.stderr)
            return 3
        if isinstance(err, OSError):
            print(f"{prog.strip()}: {_one_line(err)} (check the file or folder named; --debug shows the traceback)", file=sys.stderr)
            return 2
        print(f"{prog.strip()}: unexpected error, {_one_line(err)}; this is a bug: rerun with --debug and report the "
              "traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
