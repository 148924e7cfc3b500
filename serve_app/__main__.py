"""Command line: `python -m serve_app {plan,serve,fetch,docs,runpod-config}`.

  plan  [CONFIG]   what would be deployed for the current env and config, as JSON
  serve [CONFIG]   validate, fetch the model(s) with progress, then `serve run CONFIG`
  fetch [CONFIG]   only download / convert the model(s)
  docs             the environment-variable reference (docs/configuration.md) from the schema
  runpod-config    RunPod's worker-config.json and .runpod/hub.json from the same schema
  ray-env          `export` lines of the Ray settings to apply where Ray starts (cluster/)
  launch-config    the Serve config to start with: CONFIG, or a copy with HOST/PORT applied
                   (--scaling, --replicas MIN MAX: and the LLM deployments' replica scaling;
                   --check-on ADDRESS: refused if no node of that Ray cluster holds a replica)

Configuration errors print one message listing every bad variable, and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from serve_app.config.errors import ConfigError
from serve_app.config.ray_env import apply_ray_env, serve_config_for, shell_exports

DEFAULT_CONFIG = "serve_config.yaml"
IMPORT_PATH_PREFIX = "serve_app.app:"


def app_args(config_path: str | None) -> list[tuple[str, dict[str, Any]]]:
    """(application name, args) of each application of the Serve config built by us."""
    if not config_path:
        return [("default", {})]
    path = Path(config_path)
    if not path.is_file():
        raise ConfigError([f"{config_path}: no such Serve config file"])
    config = yaml.safe_load(path.read_text()) or {}
    apps = [
        (str(a.get("name", "default")), dict(a.get("args") or {}))
        for a in config.get("applications", [])
        if str(a.get("import_path", "")).startswith(IMPORT_PATH_PREFIX)
    ]
    if not apps:
        raise ConfigError([f"{config_path}: no application with import_path serve_app.app:..."])
    return apps


def plans(config_path: str | None, platform: str | None = None) -> list[tuple[str, Any]]:
    """The plan of each application of the config, for `platform` (default: this machine's)."""
    from serve_app.config.plan import build_plan
    from serve_app.engine import args as vllm_args

    result, problems = [], []
    for name, args in app_args(config_path):
        try:
            plan = build_plan(os.environ, args, engine_args=vllm_args, platform=platform)
            result.append((name, plan))
        except ConfigError as exc:
            problems += named(name, exc.problems)
    if problems:
        raise ConfigError(problems)
    return result


def named(app: str, problems: list[str]) -> list[str]:
    """Problems of one application, prefixed with its name when the config names it."""
    return [f"{app}: {p}" if app != "default" else p for p in problems]


def cmd_plan(ns: argparse.Namespace) -> int:
    output = {}
    for name, plan in plans(ns.config, ns.platform):
        output[name] = plan.model_dump(mode="json")
        if ns.gpus_per_node:
            for model, shown in zip(plan.models, output[name]["models"], strict=True):
                shown["placement_check"] = placement_check(model, ns.gpus_per_node)
    print(json.dumps({"applications": output}, indent=2))
    return 0


def placement_check(model: Any, gpus_per_node: int) -> dict[str, Any]:
    """Whether one replica of `model` can be placed on a cluster of nodes with `gpus_per_node`
    GPUs each (as many as the replica's workers, CPUs to spare), and why not."""
    from serve_app.config.placement import unplaceable

    placement = model.serve.placement
    nodes = [{"CPU": 1024.0, "GPU": float(gpus_per_node)}] * max(1, placement.world_size)
    reason = unplaceable(placement, nodes)
    return {"gpus_per_node": gpus_per_node, "fits": reason is None, "problem": reason}


def cmd_fetch(ns: argparse.Namespace) -> int:
    from serve_app.engine.model_files import ModelUnavailableError, resolve_model

    for _, plan in plans(ns.config):
        for model in plan.models:
            try:
                path = resolve_model(
                    model.model_name,
                    revision=model.vllm_args.get("revision"),
                    **model.storage.model_dump(),
                )
            except ModelUnavailableError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(f"{model.model_name}: {path}")
    return 0


def cmd_serve(ns: argparse.Namespace) -> int:
    status = cmd_fetch(ns)
    if status:
        return status
    serve = shutil.which("serve", path=str(Path(sys.executable).parent)) or shutil.which("serve")
    if serve is None:
        print("error: Ray Serve's `serve` command is not installed (make setup)", file=sys.stderr)
        return 1
    argv = [serve, "run", write_launch_config(ns.config), *ns.serve_args]
    applied = apply_ray_env(os.environ)  # for the Ray that `serve run` starts
    settings = "".join(f"{name}={value} " for name, value in applied.items())
    print("$ " + settings + " ".join(argv), flush=True)
    os.execv(serve, argv)
    return 0  # pragma: no cover


def write_launch_config(
    config_path: str, *, scaling: bool = False, replicas: tuple[int, int] | None = None
) -> str:
    """The config to start Serve with: as given, or a copy with HOST/PORT as HTTP options.

    With `scaling` (cluster/deploy.sh), each LLM deployment's replica scaling is written into
    the application's `deployments:` section as well, from the plan, or with `replicas`
    (MIN, MAX) as its bounds. Serve applies a change there in place, without rebuilding the
    application or restarting its replicas, as long as every deploy carries that section
    (Serve counts its first appearance as a code change): cluster/scale.sh relies on it."""
    config = yaml.safe_load(Path(config_path).read_text()) or {}
    launch = serve_config_for(config, os.environ)
    if scaling or replicas:
        by_name = dict(plans(config_path))
        launch["applications"] = [
            with_scaling(app, by_name[str(app.get("name", "default"))], replicas)
            if str(app.get("import_path", "")).startswith(IMPORT_PATH_PREFIX)
            else app
            for app in launch.get("applications", [])
        ]
    warn_if_open(launch.get("http_options") or {}, os.environ)
    if launch == config:
        return config_path
    handle, path = tempfile.mkstemp(prefix="serve_config-", suffix=".yaml")
    with os.fdopen(handle, "w") as f:
        yaml.safe_dump(launch, f, sort_keys=False)
    http = launch.get("http_options")
    if http != config.get("http_options"):
        print(f"HTTP endpoint: {http.get('host')}:{http.get('port')} (HOST/PORT)", file=sys.stderr)
    return path


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def warn_if_open(http: dict[str, Any], environ: Mapping[str, str]) -> bool:
    """Say so (stderr) when the endpoint listens beyond this machine without API_KEY."""
    host = str(http.get("host") or "127.0.0.1")
    if host in LOOPBACK or environ.get("API_KEY"):
        return False
    print(
        f"WARNING: serving on {host}:{http.get('port', 8000)} without API_KEY: whoever reaches "
        "this address can use the model and read every job. Set API_KEY=<a secret> (clients "
        "send it as `Authorization: Bearer <key>`), or HOST=127.0.0.1 to serve this machine "
        "only.",
        file=sys.stderr,
    )
    return True


def with_scaling(app: dict[str, Any], plan: Any, replicas: tuple[int, int] | None) -> dict:
    """`app` (a Serve config application) with its LLM deployments' scaling as overrides."""
    if replicas is not None:
        low, high = replicas
        if not 0 <= low <= high or high < 1:
            raise ConfigError([f"replicas {low}..{high}: expected 0 <= MIN <= MAX, MAX >= 1"])
    overrides = {d["name"]: d for d in app.get("deployments") or []}
    for model in plan.models:
        autoscaling = model.serve.autoscaling
        if replicas is not None:
            bounds = {"min_replicas": replicas[0], "max_replicas": replicas[1]}
            autoscaling = autoscaling.model_copy(update=bounds)
        name = model.deployment_name
        overrides[name] = {
            **overrides.get(name, {}),
            "name": name,
            "num_replicas": "auto",  # Serve's defaults, then ours over them
            "autoscaling_config": autoscaling.config(),
        }
    return {**app, "deployments": list(overrides.values())}


def cmd_launch_config(ns: argparse.Namespace) -> int:
    if ns.check_on:
        check_placement_on(ns.config, ns.check_on)
    print(write_launch_config(ns.config, scaling=ns.scaling, replicas=ns.replicas))
    return 0


def check_placement_on(config_path: str, address: str) -> None:
    """Refuse (ConfigError) a config with a replica that no node of the running Ray cluster at
    `address` can hold, before anything is deployed (the application's build checks again)."""
    import ray

    from serve_app.config.plan import placement_problems

    built = plans(config_path)  # a bad setting is reported without reaching the cluster
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    finally:
        ray.shutdown()
    problems = [p for name, plan in built for p in named(name, placement_problems(plan, nodes))]
    if problems:
        raise ConfigError(problems)


def cmd_ray_env(ns: argparse.Namespace) -> int:
    print(shell_exports(os.environ), end="")
    return 0


def cmd_docs(ns: argparse.Namespace) -> int:
    from serve_app.tooling.docs import check_reference, render_reference, write_reference

    if ns.write:
        changed = write_reference()
        print("docs/configuration.md " + ("updated" if changed else "already up to date"))
        return 0
    if ns.check:
        return 0 if check_reference() else 1
    print(render_reference())
    return 0


def cmd_runpod_config(ns: argparse.Namespace) -> int:
    from serve_app.tooling import runpod_config

    if ns.write:
        for path in runpod_config.write():
            print(f"updated {path.name}")
        return 0
    stale = runpod_config.stale()
    for path in stale:
        print(f"{path} is out of date: run `python -m serve_app runpod-config --write`")
    return 1 if stale else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve_app", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in (
        ("plan", cmd_plan, "print what would be deployed, as JSON"),
        ("fetch", cmd_fetch, "download or convert the model(s)"),
        ("serve", cmd_serve, "validate, fetch, then `serve run` the config"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="Ray Serve config file")
        if name == "plan":
            p.add_argument(
                "--platform",
                choices=["cpu", "gpu"],
                help="plan for this platform (default: that of the installed vLLM build)",
            )
            p.add_argument(
                "--gpus-per-node",
                type=int,
                metavar="N",
                help="also check that one replica fits nodes of N GPUs",
            )
        if name == "serve":
            p.add_argument("serve_args", nargs=argparse.REMAINDER, help="passed to `serve run`")
        p.set_defaults(func=func)
    p = sub.add_parser("docs", help="environment-variable reference from configs/env_vars.yaml")
    p.add_argument("--write", action="store_true", help="update docs/configuration.md")
    p.add_argument(
        "--check", action="store_true", help="exit 1 if docs/configuration.md is out of date"
    )
    p.set_defaults(func=cmd_docs)
    p = sub.add_parser("ray-env", help="`export` lines of the Ray settings (for cluster/)")
    p.set_defaults(func=cmd_ray_env)
    p = sub.add_parser(
        "launch-config", help="path of the Serve config to start with (HOST/PORT applied)"
    )
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="Ray Serve config file")
    p.add_argument(
        "--scaling", action="store_true", help="write each LLM deployment's replica scaling"
    )
    p.add_argument(
        "--replicas", nargs=2, type=int, metavar=("MIN", "MAX"), help="... with these bounds"
    )
    p.add_argument(
        "--check-on",
        metavar="ADDRESS",
        help="refuse replicas no node of the Ray cluster at ADDRESS can hold (exit code 2)",
    )
    p.set_defaults(func=cmd_launch_config)
    p = sub.add_parser("runpod-config", help="worker-config.json and .runpod/hub.json")
    p.add_argument("--write", action="store_true", help="regenerate them (default: check)")
    p.set_defaults(func=cmd_runpod_config)

    ns = parser.parse_args(argv)
    try:
        return ns.func(ns)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
