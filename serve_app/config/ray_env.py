"""Settings read when Ray and Serve start (schema variables with `target: ray`).

Ray's own (RAY_SERVE_ENABLE_HA_PROXY, ...) are read by its processes when they start, so they
cannot come from the application's config: whatever starts Ray applies them first (`python -m
serve_app serve`, the container, the `cluster/` scripts through `python -m serve_app
ray-env`, the tests). A value already in the environment wins. HOST and PORT become Serve's
HTTP options in the Serve config those launchers run (`serve_config_for`).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, MutableMapping
from typing import Any

from serve_app.config.env import read_env
from serve_app.config.schema import load_schema


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def ray_env_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """{name: value} of the Ray settings `environ` leaves unset, with this project's defaults."""
    return {
        var.name: _text(var.default)
        for var in load_schema().variables
        if var.target.ray and var.default is not None and not environ.get(var.name)
    }


def apply_ray_env(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set the defaults of the Ray settings that are unset; returns what was set."""
    defaults = ray_env_defaults(environ)
    environ.update(defaults)
    return defaults


def shell_exports(environ: Mapping[str, str]) -> str:
    """`export NAME=value` lines for the unset Ray settings (for `eval` in a shell script)."""
    return "".join(
        f"export {name}={shlex.quote(value)}\n" for name, value in ray_env_defaults(environ).items()
    )


def serve_config_for(config: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """The Serve config with HOST and PORT (when set) as its HTTP options."""
    values = read_env(environ)
    http = dict(config.get("http_options") or {})
    if values["HOST"] is not None:
        http["host"] = values["HOST"]
    if values["PORT"] is not None:
        http["port"] = values["PORT"]
    return {**config, "http_options": http} if http else dict(config)
