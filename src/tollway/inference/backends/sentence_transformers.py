"""Embeddings with sentence-transformers, loaded from a local directory only."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tollway.inference.backends.base import load_failed
from tollway.inference.backends.embedded import default_sentence_transformer
from tollway.inference.config import ModelConfig


class SentenceTransformersBackend:
    provider = "sentence_transformers"

    def __init__(self, cfg: ModelConfig, model: Any) -> None:
        self.cfg = cfg
        self.model = model
        self.tokenizer = model.tokenizer
        # One persistent thread runs every batch: torch's OpenMP keeps a team of
        # workers per calling thread, and stray teams would compete for the cores.
        self.executor = _executor(model)

    @staticmethod
    def load(cfg: ModelConfig) -> Any:
        """Load the model. Blocking: call from a worker thread."""
        # Never reach for a model hub: the weights are on disk or the load fails.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            path = Path(cfg.path) if cfg.path else default_sentence_transformer()
            if not path.is_dir():
                raise FileNotFoundError(f"{path} is not a model directory")
            from sentence_transformers import SentenceTransformer

            if cfg.n_threads:
                import torch

                torch.set_num_threads(cfg.n_threads)
            model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        except Exception as e:
            raise load_failed(cfg.name, f"{type(e).__name__}: {e}") from e
        return model

    def token_counts(self, texts: list[str]) -> list[int]:
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        return [len(x) for x in ids]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self.executor, self._encode, texts)
        out: list[list[float]] = vectors.tolist()
        return out

    def _encode(self, texts: list[str]) -> Any:
        return self.model.encode(
            texts, batch_size=self.cfg.batch_size, convert_to_numpy=True, show_progress_bar=False
        )


_EXECUTORS: dict[int, ThreadPoolExecutor] = {}


def _executor(model: Any) -> ThreadPoolExecutor:
    """One thread per loaded model for the life of the process (models are cached too)."""
    return _EXECUTORS.setdefault(id(model), ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed"))
