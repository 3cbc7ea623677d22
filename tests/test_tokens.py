"""Offline tiktoken: the packaged encodings load without network and count exactly."""

from __future__ import annotations

import os
import subprocess
import sys

from audit.tokens import TokenCounter, encoding_for_model, get_encoding


def test_encodings_load_offline_from_the_package(tmp_path):
    # A fresh cache dir and no network route: only the packaged data can serve it.
    code = (
        "import socket\n"
        "def no_network(*a, **k): raise OSError('network disabled in test')\n"
        "socket.socket.connect = no_network\n"
        "from audit.tokens import get_encoding\n"
        "print(len(get_encoding('o200k_base').encode('hello world')), len(get_encoding('cl100k_base').encode('hello world')))\n"
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "2"]


def test_known_token_ids_are_exact():
    # Reference ids from tiktoken's own test-suite.
    assert get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert get_encoding("o200k_base").encode("hello world") == [24912, 2375]


def test_model_families_pick_their_encoding():
    assert encoding_for_model("gpt-4o-mini-2024-07-18") == ("o200k_base", True)
    assert encoding_for_model("o3-mini") == ("o200k_base", True)
    assert encoding_for_model("gpt-4.1") == ("o200k_base", True)
    assert encoding_for_model("gpt-4-0613") == ("cl100k_base", True)
    assert encoding_for_model("gpt-4-turbo") == ("cl100k_base", True)
    assert encoding_for_model("gpt-3.5-turbo") == ("cl100k_base", True)
    assert encoding_for_model("claude-3-5-sonnet") == ("o200k_base", False)  # an estimate


def test_chat_overhead_matches_openai_rule():
    counter = TokenCounter()
    messages = '[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi", "name": "Bo"}]'
    enc = get_encoding("o200k_base")
    expected = 3 + (3 + len(enc.encode("system")) + len(enc.encode("You are a helpful assistant."))) \
        + (3 + len(enc.encode("user")) + len(enc.encode("Hi")) + len(enc.encode("Bo")) + 1)
    assert counter.count_chats([("gpt-4o", messages, "Hello")]) == [(expected, len(enc.encode("Hello")))]
    # No messages: input unknown, output still counted.
    assert counter.count_chats([("gpt-4o", None, "Hello")]) == [(None, 1)]
