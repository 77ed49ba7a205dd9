"""The quick start: `accelerate launch main.py --config_file eidos/config.yaml` (same as `eidos train`)."""

import sys

from eidos.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
