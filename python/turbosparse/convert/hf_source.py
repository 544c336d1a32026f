"""Where a Hugging Face checkpoint comes from: a local folder, or the hub's cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ConvertError

# what a conversion reads from a repository; the rest (pytorch .bin, README images) is skipped
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model"]


def fetch_hf_repo(repo: str) -> Path:
    """Download (or find in the cache) `repo` with huggingface-hub; honours HF_HUB_OFFLINE."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConvertError("--hf-repo needs the huggingface-hub package: pip install 'turbosparse[hub]'") from None
    try:
        return Path(snapshot_download(repo_id=repo, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # the hub raises many types; all mean "could not get it"
        raise ConvertError(f"--hf-repo {repo}: {type(e).__name__}: {e}") from e


def load_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ConvertError(f"{folder}: not a directory")
    path = folder / "config.json"
    if not path.is_file():
        raise ConvertError(f"config missing: {path} not found")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    return config
