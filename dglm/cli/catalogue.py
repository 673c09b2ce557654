"""What is installed and how to add to it: `dglm attributes`, `dglm plugins`, `dglm classifier train` and
`dglm plugin new`."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from dglm.errors import DglmError


def add_parsers(commands) -> None:
    """The arguments of `attributes`, `plugins`, `classifier train` and `plugin new`."""
    attrs = commands.add_parser("attributes", help="list the attributes installed plugins provide")
    attrs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    attrs.set_defaults(handler=cmd_attributes)

    plugins = commands.add_parser("plugins", help="list installed plugins")
    plugins.add_argument("--json", action="store_true", help="print JSON instead of one line a plugin")
    plugins.set_defaults(handler=cmd_plugins)

    classifier = commands.add_parser("classifier", help="train attribute probes")
    classifier = classifier.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = classifier.add_parser("train", help="train a linear probe on labelled texts and write it with its card",
                                  description="Encode labelled texts, fit a probe (logistic regression, or the labels' "
                                              "centroids when a label has under 20 training examples), evaluate it on "
                                              "a held-out split, and write NAME.safetensors + NAME.json. Turn it into "
                                              "a plugin with `dglm plugin new`.")
    train.add_argument("name", help="attribute name (lowercase, e.g. formality); the built-in names and "
                                    "'phrase' are reserved")
    train.add_argument("--data", required=True, help="CSV, TSV or JSONL file, or a `datasets` name (needs a hub)")
    train.add_argument("--text-column", default="text", help="column holding the text (default text)")
    train.add_argument("--label-column", default="label", help="column holding the label (default label)")
    train.add_argument("--encoder", default="all-MiniLM-L6-v2", help="sentence encoder; must match the pipeline's "
                                                                     "(default all-MiniLM-L6-v2)")
    train.add_argument("--describe-data", help="what the data is, for the card (default: the --data value)")
    train.add_argument("--out", type=Path, default=Path("."), help="folder for the probe files (default .)")
    train.add_argument("--test-fraction", type=float, default=0.2, help="held-out share for the accuracy in "
                                                                        "the card (default 0.2)")
    train.add_argument("--C", type=float, default=10.0, dest="regularisation", help="inverse regularisation "
                                                                                    "strength (default 10)")
    train.add_argument("--built-in", action="store_true", help="allow a built-in attribute's name, to rebuild the "
                                                               "probe dglm ships (classifiers/dglm_classifiers)")
    train.add_argument("--kind", choices=["linear", "noise-conditioned"], default="linear",
                       help="linear: the probe every attribute has (default). noise-conditioned: an MLP trained on "
                            "embeddings noised as the diffusion noises them, written as NAME-noisy.json beside the "
                            "probe in --out and named in its card, so that `--guidance-classifier noise-conditioned` "
                            "guides with it (train the linear probe first)")
    train.add_argument("--steps", type=int, default=3000, help="noise-conditioned: optimisation steps (default 3000)")
    train.set_defaults(handler=cmd_classifier_train)

    plugin = commands.add_parser("plugin", help="create plugin packages")
    plugin = plugin.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = plugin.add_parser("new", help="turn a trained probe into a pip-installable plugin package")
    new.add_argument("card", type=Path, help="the probe's JSON card (from `dglm classifier train`)")
    new.add_argument("--out", type=Path, default=Path("."), help="folder to create the package in (default .)")
    new.set_defaults(handler=cmd_plugin_new)


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
        noisy = ", noise-conditioned classifier" if row["noise_conditioned"] else ""
        print(f"{row['name']}: {', '.join(row['labels'])}\n    encoder {row['encoder']} ({row['encoder_dim']}-d), "
              f"held-out accuracy {row['held_out_accuracy']}{noisy}, plugin {row['plugin']}")


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
    if args.kind == "noise-conditioned":
        train_noise_conditioned(args, texts, labels)
        return
    probe = train_probe_on_texts(
        args.name, texts, labels, SentenceEncoder(args.encoder), data=args.describe_data or str(args.data),
        test_fraction=args.test_fraction, regularisation=args.regularisation,
    )
    card_path = probe.save(args.out)
    print(f"wrote {card_path} (labels {', '.join(probe.labels)}; held-out accuracy {probe.card['held_out_accuracy']} "
          f"on {probe.card['test_size']} texts)")


def train_noise_conditioned(args: argparse.Namespace, texts: list[str], labels: list[str]) -> None:
    """Train the noise-conditioned classifier beside the linear probe NAME.json in --out, and name it in that card."""
    from dglm.attributes.noisy_probe import train_noisy_probe
    from dglm.attributes.probes import CARD_FORMAT
    from dglm.stages.encoder import SentenceEncoder
    from dglm.stages.schedule import CosineSchedule

    linear_card = args.out / f"{args.name}.json"
    if not linear_card.is_file():
        raise DglmError(f"{linear_card} does not exist: train the linear probe into --out first (the same command "
                        "without --kind), then its noise-conditioned classifier beside it")
    if args.steps < 1:
        raise DglmError(f"--steps must be a positive number of steps, got {args.steps}")
    encoder = SentenceEncoder(args.encoder)
    probe = train_noisy_probe(args.name, encoder.encode(texts, progress=True), labels, encoder.name,
                              args.describe_data or str(args.data), CosineSchedule().logsnr,
                              test_fraction=args.test_fraction, steps=args.steps)
    card_path = probe.save(args.out)
    card = json.loads(linear_card.read_text())
    linear_card.write_text(json.dumps({**card, "format_version": CARD_FORMAT, "noise_conditioned": card_path.name},
                                      indent=2) + "\n")
    accuracy = ", ".join(f"{level}: {value}" for level, value in probe.card["held_out_accuracy_by_noise"].items())
    print(f"wrote {card_path} and named it in {linear_card} (held-out accuracy by noise level, {accuracy})")


def cmd_plugin_new(args: argparse.Namespace) -> None:
    import shlex

    from dglm.attributes.plugin_package import new_plugin

    root = new_plugin(args.card, args.out)
    # A bare name would make pip look the package up in the index and install whatever is published under it.
    local = str(root) if root.is_absolute() or str(root).startswith(".") else f"./{root}"
    print(f"created {root}; install it with `pip install {shlex.quote(local)}` and check `dglm attributes`")
