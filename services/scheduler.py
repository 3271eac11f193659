#!/usr/bin/env python3
"""Standalone entry for the scheduler service: `python services/scheduler.py [flags]`
(same as `llumnix-zmq scheduler`). Flags > LLUMNIX_* environment > --config TOML."""

import sys

from llumnix_zmq.cli import main

if __name__ == "__main__":
    sys.exit(main(["scheduler", *sys.argv[1:]]))
