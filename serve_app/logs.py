"""Logging for this application's own messages (replicas, CLI): one concise stderr format.

Ray forwards a replica's stderr to its log file and to the `serve run` console.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection

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


class QuietRoutes(logging.Filter):
    """Drops Serve's access-log line of a successful request to one of `routes` (route
    templates, as Serve logs them: "/v2/{endpoint_id}/stream/{job_id}"). Lines of failed
    requests, and every other line, pass."""

    def __init__(self, routes: Collection[str]):
        super().__init__()
        self.routes = frozenset(routes)

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "serve_access_log", False):
            return True
        if getattr(record, "route", None) not in self.routes:
            return True
        # Serve's access message ends "<status> <latency>ms" (ray.serve's access_log_msg).
        parts = str(record.msg).split()
        return len(parts) < 2 or parts[-2] != "200"


def quiet_access_log(routes: Collection[str]) -> None:
    """In this process (a Serve replica), leave successful requests to `routes` out of
    Serve's access log. Idempotent."""
    serve_logger = logging.getLogger("ray.serve")
    for existing in serve_logger.filters:
        if isinstance(existing, QuietRoutes):
            serve_logger.removeFilter(existing)
    serve_logger.addFilter(QuietRoutes(routes))


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (its type's name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def printable(text: str | None) -> str:
    """User text (a model name in an error) as one log line: control characters escaped."""
    return (text or "").encode("unicode_escape", "backslashreplace").decode("ascii")
