"""`dglm generate`: continue prefixes with chosen attributes, to the terminal or a resumable file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dglm.cli.common import (add_dtype_argument, add_setting_arguments, add_threads_argument, launch_processes,
                             share_from_main)
from dglm.errors import DglmError
from dglm.inputs import MAX_NUM_SAMPLES

EPILOG_GENERATE = """\
examples:
  dglm generate "The movie" --attr sentiment=positive -n 3
  dglm generate "The match" --attr sentiment=positive --attr topic=sport:2 --seed 7
  dglm generate "Today" --attr topic=politics:-1       # a negative weight steers away
  dglm generate --prefix-file prompts.txt -n 5 --seed 0 --output samples.jsonl   # written as it goes
  dglm generate --prefix-file prompts.txt -n 5 --seed 0 --output samples.jsonl --resume   # after a kill
  torchrun --nproc_per_node 2 -m dglm generate --prefix-file prompts.txt --seed 0 --output samples.jsonl

Attributes come from plugins: `dglm attributes` lists them with their labels.
"""


def add_parser(commands) -> None:
    """The `generate` command's arguments."""
    gen = commands.add_parser(
        "generate", help="continue a prefix with chosen attributes", epilog=EPILOG_GENERATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Continue PREFIX so that the continuation carries the requested attributes.",
    )
    gen.add_argument("prefix", nargs="?", help="text to continue (or use --prefix-file)")
    gen.add_argument("--prefix-file", type=Path, help="UTF-8 file with one prefix a line; blank lines are skipped, so "
                                                      "prefix_index counts prefixes, not lines; given with PREFIX, "
                                                      "PREFIX is prefix 0 and the file's follow. '-' reads standard "
                                                      "input, as does a pipe when no PREFIX is given (echo 'The "
                                                      "movie' | dglm generate)")
    gen.add_argument("--attr", action="append", default=[], metavar="NAME=LABEL[:WEIGHT]",
                     help="target attribute, repeatable; WEIGHT defaults to 1, negative steers away. None: unguided")
    gen.add_argument("--toward", action="append", default=[], metavar="PHRASE[:WEIGHT]",
                     help="steer towards the meaning of a phrase (\"a storm at sea\"), no labelled data needed; "
                          "repeatable, composes with --attr")
    gen.add_argument("--away", action="append", default=[], metavar="PHRASE[:WEIGHT]",
                     help="steer away from the meaning of a phrase; repeatable")
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT",
                     help="end each continuation before the first TEXT it writes; repeatable")
    gen.add_argument("-n", "--num-samples", type=int, default=1, help="continuations per prefix (default 1, at "
                                                                      f"most {MAX_NUM_SAMPLES})")
    gen.add_argument("--seed", type=int, help="base seed; sample j of prefix i uses SEED + i*NUM_SAMPLES + j, so the "
                                              "same seed gives the same text (default random; each "
                                              "sample's seed is printed)")
    settings = gen.add_argument_group("generation settings", "each defaults to the checkpoint's (see its model card)")
    add_setting_arguments(settings)
    gen.add_argument("--format", choices=["text", "jsonl"], help="text for reading, jsonl for programs (one sample a "
                                                                 "line); default text on the "
                                                                 "terminal, jsonl with --output")
    gen.add_argument("--output", type=Path, metavar="OUT", help="write samples to OUT as each batch finishes (with the "
                                                                "run's settings in OUT.settings.json), a "
                                                                "progress bar on stderr")
    gen.add_argument("--resume", action="store_true", help="continue the run that wrote OUT: skip the samples it holds "
                     "(checked one by one) and refuse other settings")
    gen.add_argument("--batch-size", type=int, default=32, help="samples generated together (default 32)")
    gen.add_argument("--model", help="checkpoint folder (default: the bundled model)")
    gen.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_dtype_argument(gen)
    add_threads_argument(gen)
    gen.set_defaults(handler=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> None:
    import itertools
    from dataclasses import asdict

    from tqdm.auto import tqdm

    from dglm.config import declared_settings
    from dglm.constraints import parse_constraint, parse_phrase
    from dglm.data.prefixes import count_prefixes, iter_prefixes, spool_stdin, stdin_is_piped
    from dglm.inputs import check_prefix
    from dglm.pipeline import Pipeline
    from dglm.processes import chunks, process_group, shared_seed
    from dglm.request_checks import check_request
    from dglm.sample_file import SampleFile, format_sample

    source = str(args.prefix_file) if args.prefix_file else None  # what the run records: "-" for standard input
    if args.prefix_file == Path("-") or (args.prefix is None and args.prefix_file is None and stdin_is_piped()):
        args.prefix_file, source = spool_stdin(), "-"
    if args.prefix is None and args.prefix_file is None:
        raise DglmError("give a PREFIX, --prefix-file FILE or --prefix-file - (standard input), with at least one "
                        "non-empty line")
    if args.resume and args.output is None:
        raise DglmError("--resume continues the file given with --output; add --output OUT")
    if args.resume and args.dtype == "bfloat16":
        raise DglmError("--resume needs --dtype float32: in bfloat16 a sample's text depends on its batch, and a "
                        "resumed run batches from where the file stops, so it would not write what one run writes")
    constraints = ([parse_constraint(spec) for spec in args.attr] + [parse_phrase(spec) for spec in args.toward]
                   + [parse_phrase(spec, -1.0) for spec in args.away])
    overrides = {name: getattr(args, name) for name in declared_settings()}
    # Everything that needs no model is checked before the model's seconds of loading.
    if args.prefix is not None:
        check_prefix(0, args.prefix)  # given with --prefix-file, PREFIX is prefix 0 and the file's follow it
    check_request(constraints, overrides, args.num_samples, args.batch_size, args.seed, args.stop)
    total = (args.prefix is not None) + (count_prefixes(args.prefix_file) if args.prefix_file is not None else 0)
    device = launch_processes(args.device)
    world, rank = process_group()
    pipeline = Pipeline.from_pretrained(args.model, device=device, threads=args.threads, dtype=args.dtype)
    diffusion, decoding = pipeline.settings(**overrides)
    prefixes = itertools.chain([args.prefix] if args.prefix is not None else [],
                               iter_prefixes(args.prefix_file) if args.prefix_file is not None else [])
    form = args.format or ("jsonl" if args.output else "text")
    seed, out = args.seed, None
    if args.output is not None and rank == 0:
        if seed is None:  # a resumed run keeps the seed its first leg drew
            seed = SampleFile.recorded(args.output).get("seed") if args.resume else shared_seed(None, 1)
        run = {"model": str(Path(args.model).resolve()) if args.model else "bundled default",
               "prefix": args.prefix, "prefix_file": str(Path(source).resolve()) if source not in (None,
                                                                                                   "-") else source,
               "attributes": [asdict(c) for c in constraints], "num_samples": args.num_samples, "seed": seed,
               **({"stop": args.stop} if args.stop else {}),  # absent when unused: earlier runs' files still resume
               **({"decoder_dtype": args.dtype} if args.dtype != "float32" else {}),  # likewise
               **asdict(diffusion), **asdict(decoding)}
        out = SampleFile(args.output, run, form, args.resume)
    skip, seed = share_from_main([out.held if out else 0, seed], world)
    if world > 1 and rank == 0:
        print(f"dglm: sharded over {world} processes", file=sys.stderr, flush=True)
    samples = pipeline.generate_stream(prefixes, constraints, args.num_samples, seed, args.batch_size, skip=skip,
                                       stop=args.stop, **overrides)
    show_progress = rank == 0 and (out is not None or sys.stderr.isatty())
    progress = tqdm(total=total * args.num_samples, initial=skip, desc="generating", unit="sample", file=sys.stderr,
                    disable=not show_progress, dynamic_ncols=True)
    for batch in chunks(samples, args.batch_size):
        if out is not None:
            out.append(batch)
        else:
            sys.stdout.write("".join(format_sample(sample, form) for sample in batch))
            sys.stdout.flush()
        progress.update(len(batch))
    progress.close()
