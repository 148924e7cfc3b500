"""Which of Serve's access-log lines a replica leaves out (serve_app/logs.py): pure logging."""

from __future__ import annotations

import logging

import pytest

from serve_app.logs import QuietRoutes, quiet_access_log

POLL = "/v2/{endpoint_id}/stream/{job_id}"


def access_record(route: str | None, message: str, access: bool = True) -> logging.LogRecord:
    """A record as Serve's replica logs it (extra: serve_access_log, route)."""
    record = logging.LogRecord("ray.serve", logging.INFO, __file__, 1, message, None, None)
    record.serve_access_log = access
    record.route = route
    return record


@pytest.mark.parametrize(
    ("route", "message", "access", "kept"),
    [
        (POLL, f"GET {POLL} 200 3.4ms", True, False),  # a successful poll: left out
        (POLL, f"127.0.0.1:5000 GET {POLL} 200 3.4ms", True, False),  # with the client address
        (POLL, f"GET {POLL} 404 2.1ms", True, True),  # a failed one: kept
        (POLL, f"GET {POLL} 503 2.1ms", True, True),
        ("/v1/models", "GET /v1/models 200 1.2ms", True, True),  # another route
        (POLL, "job 3 finished", False, True),  # not an access line
        (None, "CALL stream OK 0.2ms", True, True),
    ],
)
def test_only_successful_requests_to_the_quiet_routes_are_left_out(route, message, access, kept):
    assert QuietRoutes({POLL}).filter(access_record(route, message, access)) is kept


def test_quieting_twice_keeps_one_filter_with_the_last_routes():
    serve_logger = logging.getLogger("ray.serve")
    before = list(serve_logger.filters)
    try:
        quiet_access_log({POLL})
        quiet_access_log({"/other"})
        quiet = [f for f in serve_logger.filters if isinstance(f, QuietRoutes)]
        assert [f.routes for f in quiet] == [frozenset({"/other"})]
    finally:
        serve_logger.filters[:] = before
