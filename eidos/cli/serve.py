"""`eidos serve`: a local web page that samples from a model as you type (needs the `serve` extra: gradio)."""

from __future__ import annotations

import argparse
import logging

import torch

from eidos.cli.checks import add_model_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def run(args: argparse.Namespace) -> int:
    from eidos.cli.checks import check_device
    from eidos.sampling.pipeline import EidosPipeline
    from eidos.serving.app import build_app, import_gradio, launch_app
    from eidos.serving.live import LiveGenerator
    from eidos.training.run_folder import resolve_model_folder

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1 to 65535, got {args.port}")
    check_device(args.device)
    import_gradio()  # before loading the model: a missing extra is said at once
    folder = resolve_model_folder(args.checkpoint)
    pipeline = EidosPipeline.from_pretrained(folder).to(args.device)
    # The page shows a truncated prompt's notice; the pipeline's log warning would repeat it at every keystroke.
    logging.getLogger("eidos.encoders.text").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's requests to its own local server at start
    print(f"serving {folder} on http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    launch_app(build_app(LiveGenerator(pipeline)), args.host, args.port)
    return 0
