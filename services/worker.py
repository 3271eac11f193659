#!/usr/bin/env python3
"""Standalone entry for the worker service: `python services/worker.py [flags]`
(same as `llumnix-zmq worker`). Flags > LLUMNIX_* environment > --config TOML."""

import sys

from llumnix_zmq.cli import main

if __name__ == "__main__":
    sys.exit(main(["worker", *sys.argv[1:]]))
