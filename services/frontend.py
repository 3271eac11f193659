#!/usr/bin/env python3
"""Standalone entry for the frontend service: `python services/frontend.py [flags]`
(same as `llumnix-zmq frontend`). Flags > LLUMNIX_* environment > --config TOML."""

import sys

from llumnix_zmq.cli import main

if __name__ == "__main__":
    sys.exit(main(["frontend", *sys.argv[1:]]))
