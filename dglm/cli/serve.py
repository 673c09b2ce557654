"""`dglm serve`: the OpenAI-compatible completions API with attributes, and the playground."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dglm.cli.common import add_dtype_argument, add_threads_argument, resolve_device
from dglm.errors import DglmError

EPILOG_SERVE = """\
examples:
  dglm serve                                   # http://127.0.0.1:8000, playground at /
  DGLM_API_KEY=secret dglm serve --port 9000   # the API needs the key (/health and the page do not)
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "The movie", "attributes": ["sentiment=positive"], "n": 2, "seed": 0}'

The key is never a flag (flags show in the process list): use DGLM_API_KEY or --api-key-file.
"""


def add_parser(commands) -> None:
    """The `serve` command's arguments."""
    serve = commands.add_parser(
        "serve", help="serve an OpenAI-compatible completions API with attributes, and a playground page",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG_SERVE,
        description="Load the model once and serve POST /v1/completions (OpenAI's API plus `attributes` and the "
                    "generation settings), GET /v1/models, /v1/attributes, /health, and a playground page at /. "
                    "Requests join the batch being decoded at the next token step (continuous batching); each sample's "
                    "text depends on its seed only.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                                                          "0.0.0.0 opens it to the network, set an API key then)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--model", help="checkpoint folder (default: the bundled model)")
    serve.add_argument("--model-name", help="the name clients pass as `model` (default: dglm-default, "
                                            "or the folder's name)")
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_dtype_argument(serve)
    add_threads_argument(serve)
    serve.add_argument("--batching", choices=["continuous", "static"], default="continuous",
                       help="continuous (default): a request joins the rows already decoding at the next token step "
                            "and each row leaves as soon as it ends; static: a batch runs to its end before the next "
                            "starts (to compare against)")
    serve.add_argument("--max-batch-size", type=int, default=32, help="most rows decoded together; a sample with K "
                                                                      "candidates is K rows (default 32)")
    serve.add_argument("--max-wait-ms", type=float, default=20.0,
                       help="how long a request waits for others to share its batch (default 20); with continuous "
                            "batching, only when nothing is decoding: others join a running batch without waiting")
    serve.add_argument("--max-queue", type=int, default=256, help="most requests waiting to start; more are answered "
                                                                  "429 with Retry-After (default 256)")
    serve.add_argument("--max-n", type=int, default=16, help="most samples one request may ask for, n x "
                                                             "prompts (default 16)")
    serve.add_argument("--max-tokens", type=int, default=256, help="largest max_tokens a request may "
                                                                   "ask for (default 256)")
    serve.add_argument("--max-body-kb", type=int, default=64, help="largest request body in KiB (default 64)")
    serve.add_argument("--request-timeout-s", type=float, default=300.0, help="a request still unanswered after this "
                                                                              "many seconds gets a 504 (default 300)")
    serve.add_argument("--allowed-origins", nargs="+", default=[], metavar="ORIGIN",
                       help="let pages from these origins call the API from a browser (CORS), e.g. "
                            "https://app.example.com; '*' for any (default: none)")
    serve.add_argument("--alias", action="append", default=[], metavar="NAME=ATTR=LABEL[:W][,ATTR=LABEL...]",
                       help="also serve the model as NAME with these attributes preset (for clients that cannot send "
                            "extra fields); a request's own attributes are added; repeatable")
    serve.add_argument("--accept-any-model", action="store_true", help="answer requests for any model name with the "
                                                                       "served model (for clients with a fixed name)")
    serve.add_argument("--public-docs", action="store_true", help="with an API key, let /docs and /openapi.json be "
                                                                  "read without it (they describe the "
                                                                  "API, and hold no data)")
    serve.add_argument("--api-key-file", type=Path, help="file holding the API key (or set DGLM_API_KEY); with a key, "
                                                         "the API needs 'Authorization: Bearer KEY' (/health and the "
                                                         "page, which holds no data, do not)")
    serve.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    from dglm.pipeline import Pipeline
    from dglm.plugins import attribute_terms
    from dglm.server import ServedModels, ServerLimits, serve
    from dglm.server.state import parse_alias

    limits = ServerLimits(args.max_batch_size, args.max_wait_ms, args.max_n, args.max_tokens, args.max_body_kb,
                          args.request_timeout_s, args.max_queue, args.batching)
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
    pipeline = Pipeline.from_pretrained(args.model, device=resolve_device(args.device), threads=args.threads,
                                        dtype=args.dtype)
    print(f"dglm: serving {name!r} on http://{args.host}:{args.port} (playground at /, API at /v1/completions"
          f"{', API key required' if api_key else ''})", file=sys.stderr, flush=True)
    serve(pipeline, served, args.host, args.port, limits, api_key, args.allowed_origins, args.public_docs)
