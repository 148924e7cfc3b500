"""Logging for this application's own messages (replicas, CLI): one concise stderr format.

Ray forwards a replica's stderr to its log file and to the `serve run` console.
"""

from __future__ import annotations

import logging
import sys

_ROOT = "serve_app"


def get_logger(name: str) -> logging.Logger:
    root = logging.getLogger(_ROOT)
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(f"{_ROOT}.{name.removeprefix(_ROOT + '.')}")
