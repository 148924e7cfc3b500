"""Bake a model into the image at build time (the Dockerfile's `MODEL_NAME` build argument).

    MODEL_NAME=org/model [MODEL_REVISION=...] [TOKENIZER_NAME=...] [TOKENIZER_REVISION=...] \\
        python -m serve_app.tooling.bake /models/baked

Downloads the model (and a separate tokenizer, if named) into plain directories under the
destination and records them in `baked.json`. HF_TOKEN (a BuildKit secret in the Dockerfile)
is read from the environment and never written anywhere. MODEL_NAME may also be a local
directory, which is copied.

At run time serve_app.engine.model_files looks in BAKED_MODELS_DIR first: a baked model is used
without network access, and a volume mounted at BASE_PATH (e.g. RunPod's /runpod-volume)
cannot hide it, because the baked files live elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from serve_app.engine.model_files import MANIFEST


def slug(name: str) -> str:
    return name.strip("/").replace("/", "--")


def bake_one(name: str, revision: str | None, dest: Path, *, tokenizer_only: bool = False) -> str:
    """Put `name` under `dest`; returns its directory name there."""
    target = dest / slug(name)
    source = Path(name).expanduser()
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
        return target.name
    from huggingface_hub import snapshot_download

    from serve_app.engine.model_files import download_patterns

    patterns = download_patterns(name, revision, tokenizer_only=tokenizer_only)
    snapshot_download(name, revision=revision, local_dir=target, **patterns)
    return target.name


def bake(environ: dict[str, str], dest: Path) -> dict[str, Any]:
    """Bake the model (and tokenizer) the environment names; returns the manifest."""
    model = environ.get("MODEL_NAME", "").strip()
    if not model:
        raise SystemExit("MODEL_NAME is not set: nothing to bake")
    dest.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"models": {}}
    revision = environ.get("MODEL_REVISION") or None
    manifest["models"][model] = {"revision": revision, "path": bake_one(model, revision, dest)}
    tokenizer = (environ.get("TOKENIZER_NAME") or environ.get("TOKENIZER") or "").strip()
    if tokenizer:
        tok_revision = environ.get("TOKENIZER_REVISION") or None
        manifest["models"][tokenizer] = {
            "revision": tok_revision,
            "path": bake_one(tokenizer, tok_revision, dest, tokenizer_only=True),
        }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m serve_app.tooling.bake DEST_DIR")
    baked = bake(dict(os.environ), Path(sys.argv[1]))
    print(json.dumps(baked, indent=2))
