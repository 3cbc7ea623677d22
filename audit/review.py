"""``audit review``: blind human review of candidate answers against production's.

Reads: ``sample_sets`` and ``samples`` (which requests, their template and
draw rank), ``replays`` (the candidates' answers, ``status = 'ok'`` only),
``requests`` (the conversation in ``messages`` and production's answer in
``response_text``), ``templates`` (name and task type, shown as context) and
``verdicts`` (sources ``check`` and ``judge``, to measure agreement).
Writes: ``review_items`` (export), ``reviews`` and ``verdicts`` with
``source = 'human'`` (import); on import, a judged sample set's final
verdicts, ``decisions`` and ``movable_spend`` are recomputed
(``audit.judge.decisions.refresh_decisions``).

Export
------
One self-contained HTML page per export (``audit/html/review.html.j2``): for
each item the conversation and two answers labelled A and B, production's on
one side and a candidate's on the other. The page is blind: it carries only
opaque item ids (``i001``...), never a model or candidate name nor which side
is production; ``review_items`` alone says what was shown where. Items are
the ``ok`` replays of the sample set, optionally only the first K of each
template and candidate in draw order (``per_template``: draw order is random
inside a template, so the prefix is still an equal-probability sample of the
answered requests). The page order and each item's sides come from ``seed``
alone, so the same options give the same page; the export id does not: it is
``r<UTC date>-<time>-<6 hex>`` (hash of the options and the exact time), new
on every export, because a reviewer may still have an older page open and
their download must unblind against what *they* saw.

Logged text is data, never markup: the items travel as JSON inside a
``<script type="application/json">`` with ``<``, ``>``, ``&`` and ``'``
escaped as ``\\u003c``..., and the page renders them with ``textContent``
only. A Content-Security-Policy allows exactly the page's own script (by
hash) and no network at all.

Import
------
A download (JSON ``{export_id, reviewer, verdicts: [{item_id, choice,
reviewed_at}]}`` or CSV with the columns ``export_id, reviewer, item_id,
choice, reviewed_at``) is checked whole before anything is stored: a
malformed file, an unknown export or item id is one error and no rows.
Verdicts are unblinded through ``review_items`` and stored in ``reviews``
keyed by (export, item, reviewer): importing a file again replaces its rows,
and an item absent from a newer file keeps its earlier verdict (nothing a
reviewer sent is ever lost by a partial download).

Human verdicts: the ``verdicts`` rows with ``source = 'human'`` of every
sample set touched are rewritten from all its ``reviews``. One vote per
reviewer per request and candidate (their latest, when two exports showed
them the same pair); ``passed`` is the majority of votes (a vote passes when
the candidate was better or both were fine), NULL on a tie ("could not be
judged": the automatic evidence decides); ``score`` is the share of votes
that passed (1.0 or 0.0 for a single reviewer); ``gating`` is true;
``reason`` names reviewers and outcomes. In the decisions these rows
override the automatic ones (recomputed on import).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from audit.backends import replay_messages
from audit.db import fetch_dicts, transaction
from audit.errors import AuditError, ConfigError, InputError
from audit.judge.decisions import cohen_kappa, refresh_decisions
from audit.sample import resolve_sample_set

CHOICES = ("A", "B", "both_fine", "both_bad")
OUTCOMES = ("candidate_better", "original_better", "both_fine", "both_bad")
CSV_COLUMNS = ("export_id", "reviewer", "item_id", "choice", "reviewed_at")
TEMPLATE_DIR = Path(__file__).parent / "html"
TEMPLATE_NAME = "review.html.j2"
# Listing every bad id would make the one-line error long; a few are enough to find the cause.
SHOWN_IDS = 5


# --------------------------------------------------------------------------- export


def _utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _pick_sample_set(con: duckdb.DuckDBPyConnection, sample_set_id: str | None) -> str:
    """The set given, checked; else the latest drawn set that has answers to review."""
    if sample_set_id is not None:
        return resolve_sample_set(con, sample_set_id)
    row = con.execute("""
        SELECT s.sample_set_id FROM sample_sets s
        WHERE EXISTS (SELECT 1 FROM replays p WHERE p.sample_set_id = s.sample_set_id AND p.status = 'ok')
        ORDER BY s.drawn_at DESC, s.sample_set_id LIMIT 1""").fetchall()
    if not row:
        raise AuditError("no replayed answers to review", "run `audit sample` and `audit replay` first")
    return row[0][0]


def _check_candidates(con: duckdb.DuckDBPyConnection, set_id: str, candidates: Sequence[str] | None) -> list[str] | None:
    if not candidates:
        return None
    answered = [r[0] for r in con.execute(
        "SELECT DISTINCT candidate FROM replays WHERE sample_set_id = ? AND status = 'ok' ORDER BY 1", [set_id]).fetchall()]
    unknown = [c for c in candidates if c not in answered]
    if unknown:
        raise ConfigError(f"no answers of candidate {', '.join(unknown)} on sample set {set_id}",
                          f"candidates with answers there: {', '.join(answered)}" if answered
                          else "run `audit replay` first")
    return sorted(set(candidates))


def _export_rows(con: duckdb.DuckDBPyConnection, set_id: str, candidates: list[str] | None,
                 per_template: int | None) -> list[dict[str, Any]]:
    # Ordered so that the seeded shuffle that follows sees the same list every time.
    return fetch_dicts(con, """
        WITH answered AS (
            SELECT s.request_id, s.template_id, s.draw_rank, p.candidate, p.response_text AS candidate_text,
                   row_number() OVER (PARTITION BY s.template_id, p.candidate ORDER BY s.draw_rank) AS rank_in_template
            FROM samples s
            JOIN replays p ON p.sample_set_id = s.sample_set_id AND p.request_id = s.request_id
            WHERE s.sample_set_id = ? AND p.status = 'ok' AND p.response_text IS NOT NULL
              AND (?::VARCHAR[] IS NULL OR list_contains(?::VARCHAR[], p.candidate))
        )
        SELECT a.request_id, a.template_id, a.candidate, a.candidate_text,
               r.messages, r.response_text AS original_text, t.name AS template_name, t.task_type
        FROM answered a
        JOIN requests r USING (request_id)
        LEFT JOIN templates t USING (template_id)
        WHERE (?::BIGINT IS NULL OR a.rank_in_template <= ?)
        ORDER BY a.template_id, a.draw_rank, a.request_id, a.candidate""",
        [set_id, candidates, candidates, per_template, per_template])


def _new_export_id(con: duckdb.DuckDBPyConnection, now: datetime, options: str) -> str:
    for attempt in range(100):
        digest = hashlib.sha256(f"{options}|{now.isoformat()}|{attempt}".encode()).hexdigest()[:6]
        export_id = f"r{now:%Y%m%d-%H%M%S}-{digest}"
        if not con.execute("SELECT 1 FROM review_items WHERE export_id = ? LIMIT 1", [export_id]).fetchall():
            return export_id
    raise AuditError("could not find an unused review export id", "run the export again")  # pragma: no cover


def _conversation(messages_json: str | None) -> list[dict[str, str]]:
    if not messages_json:
        return []
    return [{"role": m["role"], "text": m["content"]} for m in replay_messages(messages_json)]


def render_page(data: dict[str, Any]) -> str:
    """The review page for ``data``: one self-contained HTML string.

    ``data`` = ``{export_id, sample_set_id, conversations: [[{role, text}]],
    items: [{id, task, task_type, conversation (index), a, b}]}``.
    """
    import base64

    import jinja2

    def csp_hash(script: str) -> str:
        # The CSP allows the page's own script by its exact bytes: anything a
        # log managed to inject could not run even if it broke out of the data.
        return "sha256-" + base64.b64encode(hashlib.sha256(str(script).encode()).digest()).decode()

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["csp_hash"] = csp_hash
    # tojson escapes <, >, & and ' as \u003c...: logged text cannot close the
    # <script> it travels in nor open a comment.
    return env.get_template(TEMPLATE_NAME).render(data=data, export_id=data["export_id"],
                                                   item_count=len(data["items"]))


def export_review(con: duckdb.DuckDBPyConnection, *, out: Path | None = None, sample_set_id: str | None = None,
                  candidates: Sequence[str] | None = None, per_template: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Write a blind review page and its ``review_items``; return what was exported.

    ``out`` is the page's path (a folder: the page goes inside it; default
    ``reports/review-<export_id>.html``). Returns ``{export_id, path,
    sample_set_id, items, per_candidate, templates, seed, per_template}``.
    """
    if per_template is not None and per_template < 1:
        raise ConfigError(f"--per-template must be at least 1, not {per_template}", "leave it out to export every answer")
    set_id = _pick_sample_set(con, sample_set_id)
    chosen = _check_candidates(con, set_id, candidates)
    rows = _export_rows(con, set_id, chosen, per_template)
    if not rows:
        raise AuditError(f"no replayed answers to review on sample set {set_id}",
                         "run `audit replay` first (only answers with status ok are reviewed)")
    rng = random.Random(seed)
    rng.shuffle(rows)
    now = _utc_now()
    export_id = _new_export_id(con, now, json.dumps([set_id, chosen, per_template, seed]))
    width = max(3, len(str(len(rows))))
    items, review_items = [], []
    # A request reviewed against several candidates carries its conversation once.
    conversations: list[list[dict[str, str]]] = []
    conversation_index: dict[str, int] = {}
    for position, row in enumerate(rows, start=1):
        item_id = f"i{position:0{width}d}"
        candidate_side = rng.choice("AB")
        answers = {candidate_side: row["candidate_text"], "B" if candidate_side == "A" else "A": row["original_text"] or ""}
        # Only what a reviewer needs: no model, candidate or request id, nothing that says which side is which.
        if row["request_id"] not in conversation_index:
            conversation_index[row["request_id"]] = len(conversations)
            conversations.append(_conversation(row["messages"]))
        items.append({"id": item_id, "task": row["template_name"] or "", "task_type": row["task_type"] or "",
                      "conversation": conversation_index[row["request_id"]], "a": answers["A"], "b": answers["B"]})
        review_items.append([export_id, item_id, set_id, row["request_id"], row["candidate"], candidate_side, position, now])

    if out is None:
        out = Path("reports") / f"review-{export_id}.html"
    elif out.is_dir():
        out = out / f"review-{export_id}.html"
    if not out.parent.exists():
        raise ConfigError(f"the folder for the review page {out} does not exist", "create it or pass another --out")
    page = render_page({"export_id": export_id, "sample_set_id": set_id, "conversations": conversations, "items": items})

    with transaction(con):
        con.executemany("INSERT INTO review_items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", review_items)
        # Written inside the transaction: a page whose items are not stored would be un-importable.
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(out)
    per_candidate = Counter(r["candidate"] for r in rows)
    return {"export_id": export_id, "path": str(out), "sample_set_id": set_id, "items": len(rows),
            "per_candidate": dict(sorted(per_candidate.items())), "templates": len({r["template_id"] for r in rows}),
            "seed": seed, "per_template": per_template}


# --------------------------------------------------------------------------- reading a download


def _parse_time(value: Any, where: str) -> datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}: reviewed_at {value!r} is not a date and time",
                         "download the file again from the review page")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{where}: reviewed_at {value!r} is not an ISO 8601 date and time",
                         "download the file again from the review page") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def _verdict(export_id: Any, reviewer: Any, item_id: Any, choice: Any, reviewed_at: Any, where: str) -> dict[str, Any]:
    hint = "download the file again from the review page"
    for name, value in (("export_id", export_id), ("item_id", item_id)):
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{where}: {name} is missing", hint)
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise InputError(f"{where}: the reviewer name is empty",
                         "type your name in the page's Reviewer field and download again")
    if choice not in CHOICES:
        raise InputError(f"{where}: choice {choice!r} is not one of {', '.join(CHOICES)}", hint)
    return {"export_id": export_id.strip(), "reviewer": reviewer.strip(), "item_id": item_id.strip(),
            "choice": choice, "reviewed_at": _parse_time(reviewed_at, where)}


def _read_json(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                         "give the file the review page downloaded, unedited") from None
    if not isinstance(document, dict) or not isinstance(document.get("verdicts"), list):
        raise InputError(f"{path}: not a review download (expected {{export_id, reviewer, verdicts: [...]}})",
                         "give the file the review page's Download JSON button saved")
    verdicts = []
    for number, entry in enumerate(document["verdicts"], start=1):
        where = f"{path}: verdict {number}"
        if not isinstance(entry, dict):
            raise InputError(f"{where} is not an object", "download the file again from the review page")
        verdicts.append(_verdict(document.get("export_id"), document.get("reviewer"), entry.get("item_id"),
                                 entry.get("choice"), entry.get("reviewed_at"), where))
    return verdicts


def _read_csv(path: Path, text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise InputError(f"{path}:1: not a review download: the CSV header lacks {', '.join(missing)}",
                             f"expected the columns {','.join(CSV_COLUMNS)}")
        verdicts = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:  # more fields than the header has
                raise InputError(f"{where}: more fields than the header", "download the file again from the review page")
            if not any((v or "").strip() for v in row.values()):
                continue
            verdicts.append(_verdict(row["export_id"], row["reviewer"], row["item_id"], row["choice"],
                                     row["reviewed_at"], where))
    except csv.Error as exc:
        raise InputError(f"{path}:{reader.line_num}: not valid CSV ({exc})", "download the file again from the review page") from None
    return verdicts


def read_download(path: Path) -> list[dict[str, Any]]:
    """The verdicts of a review download (JSON or CSV): ``[{export_id, reviewer, item_id, choice, reviewed_at}]``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"no file {path}", "give the path of the downloaded review file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (not UTF-8)", "give the JSON or CSV the review page downloaded") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", "check the path and its permissions") from None
    is_json = path.suffix.lower() == ".json" or (path.suffix.lower() != ".csv" and text.lstrip().startswith("{"))
    verdicts = _read_json(path, text) if is_json else _read_csv(path, text)
    if not verdicts:
        raise InputError(f"{path}: holds no verdicts", "cast verdicts on the page (keys 1-4) before downloading")
    seen: set[tuple[str, str, str]] = set()
    for v in verdicts:
        key = (v["export_id"], v["item_id"], v["reviewer"])
        if key in seen:
            raise InputError(f"{path}: item {v['item_id']} of export {v['export_id']} appears twice for reviewer {v['reviewer']}",
                             "download the file again from the review page")
        seen.add(key)
    return verdicts


# --------------------------------------------------------------------------- import


def _check_known(con: duckdb.DuckDBPyConnection, path: Path, verdicts: list[dict[str, Any]]) -> None:
    for export_id in sorted({v["export_id"] for v in verdicts}):
        known = {r[0] for r in con.execute("SELECT item_id FROM review_items WHERE export_id = ?", [export_id]).fetchall()}
        if not known:
            raise AuditError(f"{path} is for review export {export_id}, which this database does not have",
                             "import it into the database it was exported from (--db)")
        unknown = sorted({v["item_id"] for v in verdicts if v["export_id"] == export_id} - known)
        if unknown:
            shown = ", ".join(unknown[:SHOWN_IDS]) + (f" and {len(unknown) - SHOWN_IDS} more" if len(unknown) > SHOWN_IDS else "")
            raise AuditError(f"{path} names items that export {export_id} does not have: {shown}",
                             "the file was edited or mixes exports; download it again from that export's page")


_OUTCOME_SQL = """
    CASE WHEN v.choice = i.candidate_side THEN 'candidate_better'
         WHEN v.choice IN ('A', 'B') THEN 'original_better'
         ELSE v.choice END"""


def _rewrite_human_verdicts(con: duckdb.DuckDBPyConnection, set_ids: list[str], now: datetime) -> None:
    con.execute("DELETE FROM verdicts WHERE source = 'human' AND list_contains(?::VARCHAR[], sample_set_id)", [set_ids])
    con.execute("""
        INSERT INTO verdicts
        WITH votes AS (
            -- One vote per reviewer per pair: the latest, when several exports showed it to them.
            SELECT sample_set_id, request_id, candidate, reviewer, outcome, passed
            FROM reviews
            WHERE list_contains(?::VARCHAR[], sample_set_id)
            QUALIFY row_number() OVER (PARTITION BY sample_set_id, request_id, candidate, reviewer
                                       ORDER BY reviewed_at DESC NULLS LAST, imported_at DESC, export_id DESC) = 1
        ), tally AS (
            SELECT sample_set_id, request_id, candidate, count(*) AS n, count(*) FILTER (WHERE passed) AS passes,
                   string_agg(reviewer || ': ' || replace(outcome, '_', ' '), '; '
                              ORDER BY reviewer) AS said
            FROM votes GROUP BY ALL
        )
        SELECT sample_set_id, request_id, candidate, 'human', 'human',
               passes / n, NULL,
               CASE WHEN 2 * passes > n THEN true WHEN 2 * passes < n THEN false END,
               true,
               CASE WHEN n = 1 THEN 'reviewer ' || said
                    WHEN 2 * passes = n THEN n || ' reviewers split, ' || passes || ' passed: ' || said
                    ELSE n || ' reviewers, ' || passes || ' passed: ' || said END,
               ?
        FROM tally""", [set_ids, now])


def import_review(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, Any]:
    """Store a review download: ``reviews`` (unblinded) and the human ``verdicts``; return the summary.

    Summary: ``{file, export_ids, reviewers, sample_set_ids, items_imported,
    replaced, per_candidate: [{candidate, reviewed, <outcome counts>, passed,
    pass_rate}], agreement: human_agreement(...) of each sample set}``.
    """
    path = Path(path)
    verdicts = read_download(path)
    _check_known(con, path, verdicts)
    import pyarrow as pa

    staged = pa.table({
        "export_id": [v["export_id"] for v in verdicts],
        "item_id": [v["item_id"] for v in verdicts],
        "reviewer": [v["reviewer"] for v in verdicts],
        "choice": [v["choice"] for v in verdicts],
        "reviewed_at": pa.array([v["reviewed_at"] for v in verdicts], type=pa.timestamp("us")),
    })
    now = _utc_now()
    con.register("review_download", staged)
    try:
        with transaction(con):
            replaced = con.execute("""
                SELECT count(*) FROM reviews r JOIN review_download d USING (export_id, item_id, reviewer)""").fetchall()[0][0]
            con.execute("""
                DELETE FROM reviews WHERE (export_id, item_id, reviewer) IN
                    (SELECT (export_id, item_id, reviewer) FROM review_download)""")
            con.execute(f"""
                INSERT INTO reviews
                SELECT v.export_id, v.item_id, i.sample_set_id, i.request_id, i.candidate, v.reviewer, v.choice,
                       {_OUTCOME_SQL} AS outcome,
                       ({_OUTCOME_SQL}) IN ('candidate_better', 'both_fine') AS passed,
                       v.reviewed_at, ?, ?
                FROM review_download v JOIN review_items i USING (export_id, item_id)""", [str(path.resolve()), now])
            set_ids = [r[0] for r in con.execute("""
                SELECT DISTINCT i.sample_set_id FROM review_download v JOIN review_items i USING (export_id, item_id)
                ORDER BY 1""").fetchall()]
            _rewrite_human_verdicts(con, set_ids, now)
            per_candidate = fetch_dicts(con, """
                SELECT i.candidate, count(*) AS reviewed,
                       count(*) FILTER (WHERE r.outcome = 'candidate_better') AS candidate_better,
                       count(*) FILTER (WHERE r.outcome = 'original_better') AS original_better,
                       count(*) FILTER (WHERE r.outcome = 'both_fine') AS both_fine,
                       count(*) FILTER (WHERE r.outcome = 'both_bad') AS both_bad,
                       count(*) FILTER (WHERE r.passed) AS passed
                FROM review_download v
                JOIN review_items i USING (export_id, item_id)
                JOIN reviews r USING (export_id, item_id, reviewer)
                GROUP BY i.candidate ORDER BY i.candidate""")
    finally:
        con.unregister("review_download")
    for row in per_candidate:
        row["pass_rate"] = row["passed"] / row["reviewed"]
    # Human verdicts override the automatic ones: the decisions of a judged sample set follow at once.
    redecided = {set_id: len(refresh_decisions(con, set_id)) for set_id in set_ids}
    return {
        "file": str(path),
        "export_ids": sorted({v["export_id"] for v in verdicts}),
        "reviewers": sorted({v["reviewer"] for v in verdicts}),
        "sample_set_ids": set_ids,
        "items_imported": len(verdicts),
        "replaced": replaced,
        "per_candidate": per_candidate,
        "agreement": [row for set_id in set_ids for row in human_agreement(con, set_id)],
        "decisions_recomputed": redecided,
    }


# --------------------------------------------------------------------------- agreement


def human_agreement(con: duckdb.DuckDBPyConnection, sample_set_id: str) -> list[dict[str, Any]]:
    """How often the automatic verdicts agree with the human ones, per candidate and source.

    Pairs are the requests with a human pass/fail (ties left out) and an
    automatic one: ``check`` = all gating check rows of the request and
    candidate passed (any failed: fail; none failed but some unjudged: left
    out); ``judge`` = the ``pairwise`` verdict's ``passed``. One row per
    candidate with human verdicts and source: ``{sample_set_id, candidate,
    source, n, agreed, agreement, kappa, both_passed, both_failed,
    human_only_passed, automatic_only_passed}``; ``agreement`` and ``kappa``
    are None without pairs (kappa also when one side never varies).
    """
    pairs = fetch_dicts(con, """
        WITH human AS (
            SELECT request_id, candidate, passed FROM verdicts
            WHERE sample_set_id = ? AND source = 'human' AND passed IS NOT NULL
        ), checks AS (
            SELECT request_id, candidate,
                   CASE WHEN count(*) FILTER (WHERE NOT passed) > 0 THEN false
                        WHEN count(*) FILTER (WHERE passed) = count(*) THEN true END AS passed
            FROM verdicts WHERE sample_set_id = ? AND source = 'check' AND gating
            GROUP BY ALL
        ), judge AS (
            SELECT request_id, candidate, passed FROM verdicts
            WHERE sample_set_id = ? AND source = 'judge' AND metric = 'pairwise' AND passed IS NOT NULL
        ), automatic AS (
            SELECT 'check' AS source, * FROM checks WHERE passed IS NOT NULL
            UNION ALL SELECT 'judge' AS source, * FROM judge
        )
        SELECT h.candidate, a.source, h.passed AS human, a.passed AS automatic
        FROM human h JOIN automatic a USING (request_id, candidate)
        ORDER BY h.candidate, a.source, h.request_id""", [sample_set_id] * 3)
    candidates = [r[0] for r in con.execute(
        "SELECT DISTINCT candidate FROM verdicts WHERE sample_set_id = ? AND source = 'human' ORDER BY 1",
        [sample_set_id]).fetchall()]
    result = []
    for candidate in candidates:
        for source in ("check", "judge"):
            these = [(p["human"], p["automatic"]) for p in pairs if p["candidate"] == candidate and p["source"] == source]
            n = len(these)
            agreed = sum(h == a for h, a in these)
            result.append({
                "sample_set_id": sample_set_id, "candidate": candidate, "source": source, "n": n, "agreed": agreed,
                "agreement": agreed / n if n else None, "kappa": cohen_kappa(these),
                "both_passed": sum(h and a for h, a in these), "both_failed": sum(not h and not a for h, a in these),
                "human_only_passed": sum(h and not a for h, a in these),
                "automatic_only_passed": sum(a and not h for h, a in these),
            })
    return result
