"""Data commands: `prepare-trex` (T-REx → `trex-rc/`) and `parse` (text/CoNLL-U → `parsed/`).

Thin typer functions: they parse options and call `kadapter_cli.data.trex` / `kadapter_cli.data.parsing`.
Parsers (Stanza, spaCy) are imported inside the library functions so `kadapter --help` stays fast.
Every flag's default is the library's (`default_of`: the signature of the function it sets).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from kadapter_cli.commands import app
from kadapter_cli.commands.common import default_of, echo_json, get_workdir
from kadapter_cli.data.parsing import ParserSpec, parse
from kadapter_cli.data.ray_engine import RayOptions
from kadapter_cli.data.trex import prepare_trex
from kadapter_cli.errors import BadInput
from kadapter_cli.progress import info


def parse_shard(spec: Optional[str]) -> tuple[int, int] | None:
    """`"I/N"` (1 ≤ I ≤ N) → `(I, N)`; None stays None."""
    if spec is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise BadInput(f"--shard must be I/N with 1 <= I <= N (e.g. 2/8), got {spec!r}")
    return int(match[1]), int(match[2])


ENGINE_HELP = ("local: this machine's processes (--workers); ray: a Ray Data job, on a local Ray instance "
               "or the cluster at --ray-address (pip install 'kadapter[ray]').")
RAY_ADDRESS_HELP = ("With --engine ray: the cluster to run on (auto: the one this node belongs to or RAY_ADDRESS; "
                    "run on a node of the cluster: Ray Data does not run through Ray Client, ray://). "
                    "Default: a new local Ray instance on this machine's cores.")
MAX_RETRIES_HELP = "With --engine ray: times the work of a worker that died is run again (counted in the manifest)."
VERBOSE_HELP = "With --engine ray: show Ray's own per-operator progress bars and worker logs."


def ray_options(address: Optional[str], num_gpus_per_worker: float, max_retries: int, verbose: bool):
    return RayOptions(address=address, num_gpus_per_worker=num_gpus_per_worker, max_retries=max_retries,
                      verbose=verbose)


@app.command("prepare-trex")
def prepare_trex_cli(
    ctx: typer.Context,
    inputs: list[Path] = typer.Argument(
        ..., help="T-REx dump files (.json or .json.gz, each a JSON array of documents) or folders of them "
                  "(walked in sorted order). With --merge: trex-shard folders, or a folder holding them."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output folder (default: <workdir>/trex-rc; with --shard I/N: "
                            "<workdir>/trex-shards/shard-I-of-N)."),
    drop: list[str] = typer.Option(
        list(default_of(prepare_trex, "drop")), "--drop", help="Relation to leave out (repeatable). Default P31 (instance of), as K-Adapter; "
                                "--drop '' keeps every relation."),
    min_count: int = typer.Option(
        default_of(prepare_trex, "min_count"), "--min-count", help="Leave out relations with fewer examples than this (train and dev together)."),
    dev_ratio: float = typer.Option(default_of(prepare_trex, "dev_ratio"), "--dev-ratio", help="Share of examples that go to dev.jsonl."),
    seed: int = typer.Option(default_of(prepare_trex, "seed"), "--seed", help="Seed of the train/dev split (a hash of each example id)."),
    entities_only: bool = typer.Option(
        False, "--entities-only", help="Leave out triples whose object is a literal (a date such as P569 date of "
                                       "birth, a quantity). By default they are kept, obj_label holding the value."),
    workers: int = typer.Option(
        default_of(prepare_trex, "workers"), "--workers", help="Processes reading files in parallel (one file each at a time); with --engine ray, "
                             "Ray tasks."),
    engine: str = typer.Option(default_of(prepare_trex, "engine"), "--engine", metavar="local|ray", help=ENGINE_HELP),
    address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    max_retries: int = typer.Option(default_of(RayOptions, "max_retries"), "--max-retries", help=MAX_RETRIES_HELP),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="I/N: read only every N-th input file starting at the I-th, and write an unfiltered "
                              "trex-shard artifact; combine all N with --merge."),
    merge: bool = typer.Option(
        False, "--merge", help="INPUTS are the N trex-shard artifacts of one sharding: merge them into trex-rc/ "
                               "(the same files a single run gives)."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Skip malformed documents (and unreadable files) and count them in the manifest "
                                  "instead of stopping."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
    limit: Optional[int] = typer.Option(
        None, "--limit", help="Read only the first N documents (in input order; runs in one process)."),
    allow_empty: bool = typer.Option(
        False, "--allow-empty", help="Write the artifact even when no relation is left (otherwise exit 2)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's stats as JSON on stdout."),
) -> None:
    """Turn T-REx dumps into relation-classification examples for the fac adapter (trex-rc/).

    Streams the dumps (one document in memory at a time), keeps triples whose subject and object are
    word-aligned and non-overlapping inside one sentence (objects may be literals, e.g. dates, unless
    --entities-only), de-duplicates, drops rare and --drop'ed
    relations and splits train/dev by a seeded hash of each example id.
    """
    from kadapter_cli.artifacts.layout import trex_rc_dir, trex_shard_dir
    from kadapter_cli.data.trex import merge_trex_shards

    workdir = get_workdir(ctx)
    relations = [r for r in drop if r.strip()]
    shard_spec = parse_shard(shard)
    if merge:
        if shard_spec is not None or limit is not None or engine != "local":
            raise BadInput("--merge combines finished shards; it takes no --shard, --limit or --engine")
        target = out or trex_rc_dir(workdir)
        manifest = merge_trex_shards(inputs, target, drop=relations, min_count=min_count, dev_ratio=dev_ratio,
                                     seed=seed, entities_only=entities_only, overwrite=overwrite,
                                     allow_empty=allow_empty)
    else:
        target = out or (trex_rc_dir(workdir) if shard_spec is None else trex_shard_dir(workdir, shard_spec))
        manifest = prepare_trex(inputs, target, drop=relations, min_count=min_count, dev_ratio=dev_ratio, seed=seed,
                                entities_only=entities_only, workers=workers, shard=shard_spec, skip_bad=skip_bad,
                                overwrite=overwrite, limit=limit, allow_empty=allow_empty, engine=engine,
                                ray_options=ray_options(address, default_of(RayOptions, "num_gpus_per_worker"), max_retries, verbose))
    stats = manifest["stats"]
    bad = stats["bad_documents"] + stats["bad_files"]
    skipped = f"; skipped {stats['bad_documents']} bad documents, {stats['bad_files']} bad files" if bad else ""
    if manifest["kind"] == "trex-shard":
        info(f"shard {stats['shard']}: {stats['documents']:,} documents → {stats['examples']:,} examples "
             f"in {target}{skipped}")
    else:
        info(f"{stats['documents']:,} documents, {stats['triples']:,} triples → {stats['examples']:,} examples "
             f"({stats['train']:,} train, {stats['dev']:,} dev), {stats['relations']} relations in {target}{skipped}")
    if as_json:
        echo_json(stats)


@app.command("parse")
def parse_cli(
    ctx: typer.Context,
    inputs: list[Path] = typer.Argument(
        ..., help="Text files (one sentence or paragraph per line; blank lines skipped), CoNLL-U files "
                  "(.conllu: read as gold trees), or folders of them (walked in sorted order)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <workdir>/parsed)."),
    kind: str = typer.Option(
        default_of(ParserSpec, "kind"), "--parser", metavar="stanza|spacy|conllu", help="Parser (conllu: gold trees from CoNLL-U files)."),
    lang: str = typer.Option(default_of(ParserSpec, "lang"), "--lang", help="Stanza language code."),
    model_dir: Optional[Path] = typer.Option(
        None, "--model-dir", help="Models folder: Stanza's resources (default: Stanza's own); for spaCy, a folder "
                                  "holding the --model pipeline (saved with nlp.to_disk). On a cluster, one every "
                                  "node can read. Nothing is downloaded."),
    model: Optional[str] = typer.Option(
        None, "--model", help="spaCy pipeline name or path (default: en_core_web_sm)."),
    device: str = typer.Option(default_of(ParserSpec, "device"), "--device", metavar="cpu|cuda|auto", help="Where the parser runs (auto: cuda when available)."),
    pretokenized: bool = typer.Option(
        False, "--pretokenized", help="Lines are already tokenised: split on whitespace, one sentence per line."),
    tokenize_batch_size: int = typer.Option(default_of(ParserSpec, "tokenize_batch_size"), "--tokenize-batch-size", help="Stanza tokenizer batch size."),
    pos_batch_size: int = typer.Option(default_of(ParserSpec, "pos_batch_size"), "--pos-batch-size", help="Stanza POS tagger batch size (words)."),
    depparse_batch_size: int = typer.Option(
        default_of(ParserSpec, "depparse_batch_size"), "--depparse-batch-size", help="Stanza dependency parser batch size (words)."),
    batch_size: int = typer.Option(default_of(ParserSpec, "batch_size"), "--batch-size", help="spaCy nlp.pipe batch size (texts)."),
    n_process: int = typer.Option(default_of(ParserSpec, "n_process"), "--n-process", help="spaCy nlp.pipe processes."),
    max_words: Optional[int] = typer.Option(
        None, "--max-words", help="Drop sentences with more words than this (counted in the manifest)."),
    dev_ratio: float = typer.Option(default_of(parse, "dev_ratio"), "--dev-ratio", help="Share of sentences that go to dev.jsonl."),
    seed: int = typer.Option(default_of(parse, "seed"), "--seed", help="Seed of the train/dev split (a hash of each sentence id)."),
    workers: int = typer.Option(
        default_of(parse, "workers"), "--workers", help="Processes parsing chunks of lines in parallel (each loads its own model); with "
                             "--engine ray, the size of the pool of parser actors."),
    engine: str = typer.Option(default_of(parse, "engine"), "--engine", metavar="local|ray", help=ENGINE_HELP),
    address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    num_gpus_per_worker: float = typer.Option(
        default_of(RayOptions, "num_gpus_per_worker"), "--num-gpus-per-worker", help="With --engine ray: GPUs each parser actor reserves (0.5: two actors "
                                           "share a GPU); add --device cuda."),
    max_retries: int = typer.Option(default_of(RayOptions, "max_retries"), "--max-retries", help=MAX_RETRIES_HELP),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE_HELP),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="I/N: parse only every N-th input unit (line or CoNLL-U sentence) starting at the "
                              "I-th; combine the N outputs with --merge."),
    merge: bool = typer.Option(
        False, "--merge", help="INPUTS are the N parsed/ shard outputs of one sharding: concatenate them "
                               "(in shard order) into one parsed/ artifact."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Skip malformed CoNLL-U sentences and count them instead of stopping."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output folder if it exists."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Parse only the first N lines or CoNLL-U sentences."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest's stats as JSON on stdout."),
) -> None:
    """Dependency-parse text (Stanza or spaCy) or read gold CoNLL-U trees into parsed/ for the lin adapter."""
    from kadapter_cli.artifacts.layout import parsed_dir
    from kadapter_cli.data.parsing import merge_parsed_shards

    target = out or parsed_dir(get_workdir(ctx))
    shard_spec = parse_shard(shard)
    if merge:
        if shard_spec is not None or limit is not None or engine != "local":
            raise BadInput("--merge combines finished shards; it takes no --shard, --limit or --engine")
        manifest = merge_parsed_shards(inputs, target, overwrite=overwrite)
    else:
        spec = ParserSpec(
            kind=kind, lang=lang, model=model, model_dir=str(model_dir) if model_dir else None, device=device,
            pretokenized=pretokenized, tokenize_batch_size=tokenize_batch_size, pos_batch_size=pos_batch_size,
            depparse_batch_size=depparse_batch_size, batch_size=batch_size, n_process=n_process)
        manifest = parse(inputs, target, spec=spec, max_words=max_words, dev_ratio=dev_ratio, seed=seed,
                         workers=workers, shard=shard_spec, skip_bad=skip_bad, overwrite=overwrite, limit=limit,
                         engine=engine, ray_options=ray_options(address, num_gpus_per_worker, max_retries, verbose))
    stats = manifest["stats"]
    dropped = sum(stats["dropped"].values())
    info(f"{stats['sentences']:,} sentences, {stats['words']:,} words ({stats['train']:,} train, "
         f"{stats['dev']:,} dev; {dropped:,} dropped) at {stats['words_per_second']:,.0f} words/s in {target}")
    if as_json:
        echo_json(stats)
