"""``audit judge calibrate FILE``: how often does a judging method agree with human labels?

Reads: a labelled pairwise file, ``[{input, output_1, output_2, label}]`` with
label 1 or 2 the better output (the format of LLMBar and MT-Bench's human
judgments), as a JSON array or JSON lines. Writes: ``judge_calibrations``
(one row per file and method, replaced by a rerun) and, for an LLM judge, its calls in
``judge_calls`` under the sample set ``calibration:<sha256 of the file>``
(so a rerun pays only for calls not yet made).

Methods: ``checks`` (the automatic checks' pairwise preference,
``audit.judge.checks.pairwise_preference``: it is built to compare an answer
with a reference, so it mostly says "tie" on two different answers; that is
the honest outcome) and an LLM judge (``NAME=ENGINE:MODEL``), run exactly as
``audit judge`` runs it: both orders, a verdict only when they agree.

Figures: ``accuracy`` on the pairs the method did not call a tie; ``tie_rate``;
Cohen's ``kappa`` over all pairs with a tie counted as a disagreement (the
chance-corrected agreement: 0 is what a coin would get, 1 is perfect).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from audit.backends import Candidate, Engine, open_engine, parse_candidate
from audit.errors import InputError
from audit.judge.decisions import cohen_kappa
from audit.pricing import PriceBook

CALIBRATION_SET_PREFIX = "calibration:"


def load_labelled_pairs(path: Path) -> list[dict[str, Any]]:
    """The file's pairs, validated; InputError naming the file and the record when malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}", "give a labelled pairwise JSON file") from None
    hint = "each record needs input, output_1, output_2 and label (1 or 2)"
    try:
        data = json.loads(text)
        records = data if isinstance(data, list) else None
    except ValueError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as error:
            raise InputError(f"{path}: neither a JSON array nor JSON lines ({error})", hint) from None
    if not records:
        raise InputError(f"{path}: no labelled pairs", hint)
    pairs = []
    for index, record in enumerate(records, 1):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("input", "output_1", "output_2")):
            raise InputError(f"{path}: record {index} lacks input, output_1 or output_2 as text", hint)
        label = str(record.get("label")).strip()
        if label not in ("1", "2"):
            raise InputError(f"{path}: record {index} has label {record.get('label')!r}", hint)
        pairs.append({"input": record["input"], "output_1": record["output_1"], "output_2": record["output_2"],
                      "label": label})
    return pairs


def agreement(human: list[str], method: list[str]) -> dict[str, Any]:
    """Accuracy (non-tie pairs), tie rate and Cohen's kappa of ``method`` ('1' | '2' | 'tie') against ``human``."""
    n = len(human)
    decided = [(h, m) for h, m in zip(human, method) if m != "tie"]
    correct = sum(1 for h, m in decided if h == m)
    kappa = cohen_kappa(list(zip(human, method)))
    return {"pairs": n, "decided": len(decided), "correct": correct,
            "accuracy": correct / len(decided) if decided else None,
            "tie_rate": (n - len(decided)) / n if n else None, "kappa": kappa}


def _checks_preferences(pairs: list[dict[str, Any]], embedder: Any) -> list[str]:
    from audit.judge.checks import pairwise_preference

    # The checks that need no reference answer decide (embeddings need one), so no model is loaded.
    return [pairwise_preference(p["input"], p["output_1"], p["output_2"], None, embedder) for p in pairs]


def _judge_preferences(con: duckdb.DuckDBPyConnection, set_id: str, pairs: list[dict[str, Any]], judge: Candidate, *,
                       book: PriceBook, max_cost_usd: float, gpu_hourly_usd: float,
                       engine_factory: Callable[[Candidate], Engine],
                       on_progress: Callable[[int, int, float], None] | None) -> tuple[list[str], dict[str, Any]]:
    """The judge on every pair, both orders; output_1 plays the 'original', output_2 the 'candidate'."""
    from audit.judge import count_tokens
    from audit.judge.llm_judge import plan_judge, run_judge

    as_judged = [{"request_id": f"pair-{i:05d}", "candidate": "output_2", "task_type": None,
                  "messages": [{"role": "user", "content": p["input"]}],
                  "original_answer": p["output_1"], "candidate_answer": p["output_2"]} for i, p in enumerate(pairs)]
    plan = plan_judge(con, set_id, judge, as_judged, book=book, gpu_hourly_usd=gpu_hourly_usd, count_tokens=count_tokens)
    run = {**plan.as_dict(), **run_judge(con, set_id, plan, max_cost_usd=max_cost_usd, engine_factory=engine_factory,
                                         on_progress=on_progress)}
    stored = con.execute("""SELECT request_id, original_position, preferred FROM judge_calls
                            WHERE sample_set_id = ? AND judge = ? AND judge_spec = ? AND status = 'ok'""",
                         [set_id, judge.name, judge.spec]).fetchall()
    by_pair: dict[str, dict[str, str | None]] = {}
    for request_id, position, preferred in stored:
        by_pair.setdefault(request_id, {})[position] = preferred
    preferences = []
    for pair in as_judged:
        orders = by_pair.get(pair["request_id"], {})
        first, second = orders.get("A"), orders.get("B")
        if first is not None and first == second and first != "tie":
            preferences.append("1" if first == "original" else "2")
        else:
            preferences.append("tie")
    return preferences, run


def calibrate(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    *,
    judge_spec: str | None = None,
    limit: int | None = None,
    book: PriceBook | None = None,
    max_cost_usd: float = 1.0,
    gpu_hourly_usd: float = 3.0,
    embedder: Any = None,
    engine_factory: Callable[[Candidate], Engine] = open_engine,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Agreement with the file's human labels of the checks and, when given, of the LLM judge."""
    pairs = load_labelled_pairs(path)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be at least 1, not {limit}", "e.g. --limit 50")
        pairs = pairs[:limit]
    human = [p["label"] for p in pairs]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    results = [{"method": "checks", **agreement(human, _checks_preferences(pairs, embedder))}]
    if judge_spec:
        judge = parse_candidate(judge_spec)
        preferences, run = _judge_preferences(con, CALIBRATION_SET_PREFIX + digest, pairs, judge, book=book or PriceBook(),
                                              max_cost_usd=max_cost_usd, gpu_hourly_usd=gpu_hourly_usd,
                                              engine_factory=engine_factory, on_progress=on_progress)
        results.append({"method": judge.spec, "judge": judge.name, **agreement(human, preferences), "run": run})
    for result in results:
        # One row per file and method: a rerun replaces its measurement.
        con.execute("DELETE FROM judge_calibrations WHERE file = ? AND method = ?", [str(path), result["method"]])
        con.execute("INSERT INTO judge_calibrations VALUES (now()::TIMESTAMP, ?, ?, ?, ?, ?, ?)",
                    [str(path), result["method"], result["pairs"], result["accuracy"], result["kappa"], result["tie_rate"]])
    labels = Counter(human)
    return {"file": str(path), "sha256": digest, "pairs": len(pairs),
            "human_labels": {"output_1": labels["1"], "output_2": labels["2"]}, "methods": results}
