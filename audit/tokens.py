"""Exact, offline token counting with tiktoken.

tiktoken downloads its encodings on first use, which fails on machines
without internet. The ``bpe-openai`` package ships ``o200k_base`` and
``cl100k_base`` as ``.tiktoken.gz`` files whose unpacked bytes carry exactly
the sha256 tiktoken checks; written into tiktoken's cache directory under the
sha1 of the encoding's URL (tiktoken's own cache key), they make
``tiktoken.get_encoding`` work offline, unchanged and exact.

Which encoding a model uses: o200k_base for the GPT-4o / 4.1 / 4.5 / 5 and
o-series families, cl100k_base for GPT-4, GPT-3.5 and the embeddings. Other
families (Claude, Llama, Gemini, Mistral, ...) use tokenizers that are not
available offline; their counts use o200k_base and are an *estimate*
(``encoding_for_model`` says so).

Chat overhead follows OpenAI's published rule for the chat format: 3 tokens
per message, 1 more per ``name``, and 3 to prime the reply.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import os
import re
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

import tiktoken

from audit.errors import AuditError

_ENCODING_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
_DEFAULT_CACHE = Path("~/.cache/llm-spend-audit/tiktoken").expanduser()

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

_CL100K_MODELS = re.compile(r"^(gpt-4(?!o|\.\d|-?o)|gpt-3\.5|text-embedding|davinci|babbage)")
_O200K_MODELS = re.compile(r"^(gpt-4o|gpt-4\.\d|gpt-5|o\d|chatgpt|gpt-oss|codex)")


def _install_offline(name: str) -> None:
    """Put the packaged encoding where tiktoken looks before downloading."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if not cache_dir:
        cache_dir = str(_DEFAULT_CACHE)
        os.environ["TIKTOKEN_CACHE_DIR"] = cache_dir
    target = Path(cache_dir) / hashlib.sha1(_ENCODING_URLS[name].encode()).hexdigest()
    if target.exists():
        return
    packaged = importlib.resources.files("bpe_openai") / "data" / f"{name}.tiktoken.gz"
    try:
        data = gzip.decompress(packaged.read_bytes())
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise AuditError(
            f"the tokenizer data for {name} is not installed ({exc})",
            "reinstall with `make install` (package bpe-openai)",
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(target)  # atomic: a concurrent reader never sees half a file


@cache
def get_encoding(name: str) -> tiktoken.Encoding:
    if name not in _ENCODING_URLS:
        raise AuditError(f"unknown encoding {name!r}", f"use one of {sorted(_ENCODING_URLS)}")
    _install_offline(name)
    return tiktoken.get_encoding(name)


def encoding_for_model(model: str | None) -> tuple[str, bool]:
    """Return ``(encoding name, exact)`` for a model; ``exact`` is False for estimates."""
    m = (model or "").lower().split("/")[-1]
    if _CL100K_MODELS.match(m):
        return "cl100k_base", True
    if _O200K_MODELS.match(m):
        return "o200k_base", True
    return "o200k_base", False


def message_text(content: object) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if text is None and part.get("type") in ("text", "input_text", "output_text"):
                    text = part.get("content")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return json.dumps(content, ensure_ascii=False)


class TokenCounter:
    """Counts chat prompts and completions, caching repeated message texts.

    Chat logs repeat themselves (system prompts, re-sent histories), so each
    distinct text is encoded once per encoding.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], int] = {}

    def _count_texts(self, encoding: str, texts: Sequence[str]) -> list[int]:
        missing = list({t for t in texts if (encoding, t) not in self._cache})
        if missing:
            counts = [len(ids) for ids in get_encoding(encoding).encode_ordinary_batch(missing)]
            self._cache.update(zip(((encoding, t) for t in missing), counts))
        return [self._cache[(encoding, t)] for t in texts]

    def count_chats(
        self, rows: Iterable[tuple[str | None, str | None, str | None]]
    ) -> list[tuple[int | None, int | None]]:
        """For rows of ``(model, messages_json, response_text)`` return ``(input, output)``.

        ``input`` is None when the messages are missing or not a list.
        """
        parsed = []
        by_encoding: dict[str, list[str]] = {}
        for model, messages_json, response_text in rows:
            encoding, _ = encoding_for_model(model)
            try:
                messages = json.loads(messages_json) if messages_json else None
            except (TypeError, ValueError):
                messages = None
            if not isinstance(messages, list):
                messages = None
            texts = []
            names = 0
            for message in messages or []:
                if isinstance(message, dict):
                    texts.append(message_text(message.get("content")))
                    texts.append(str(message.get("role") or ""))
                    if isinstance(message.get("name"), str):
                        texts.append(message["name"])
                        names += 1
                else:
                    texts.append(message_text(message))
            by_encoding.setdefault(encoding, []).extend(texts)
            if response_text is not None:
                by_encoding[encoding].append(response_text)
            parsed.append((encoding, messages, texts, names, response_text))
        for encoding, texts in by_encoding.items():
            self._count_texts(encoding, texts)  # fills the cache in one batch per encoding
        results: list[tuple[int | None, int | None]] = []
        for encoding, messages, texts, names, response_text in parsed:
            prompt = None
            if messages is not None:
                n_messages = len(messages)
                prompt = (
                    sum(self._cache[(encoding, t)] for t in texts)
                    + TOKENS_PER_MESSAGE * n_messages
                    + TOKENS_PER_NAME * names
                    + REPLY_PRIMING_TOKENS
                )
            completion = self._cache[(encoding, response_text)] if response_text is not None else None
            results.append((prompt, completion))
        return results
