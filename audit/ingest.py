"""``audit ingest``: log exports → the ``requests`` ledger.

Reads: the files given (formats in ``audit.formats``).
Writes: ``ingest_files`` (one row per file version), ``requests`` (one row per
call), ``ingest_rejects`` (records that could not be stored, with file, line,
reason and the raw text, capped), ``batch_requests`` (Batch API inputs).

Guarantees:
- Nothing is lost: for every file, records read = stored + duplicate + rejected.
  A duplicate is a call already in the ledger (same ``request_id``), from an
  earlier file or earlier in the same file (the last copy wins within a file).
- Each file is one transaction: a process killed mid-file leaves all or none
  of that file's rows.
- Re-ingesting a file whose bytes were ingested before adds nothing;
  ``replace=True`` first removes what earlier versions of the same path stored.
- Tokens are normalised to: ``input_tokens`` (all input, cached included),
  ``cached_input_tokens``, ``cache_write_tokens``, ``output_tokens``
  (reasoning included), ``reasoning_tokens``. Where a call logged no usage,
  they are counted exactly with tiktoken (``tokens_source = 'counted'``);
  logged usage is never recounted.

The bulk of the work (splitting lines, parsing JSON, checks, normalisation,
de-duplication) runs as SQL inside DuckDB, on all cores; Python only counts
tokens for the calls that logged none.
"""

from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from audit.db import sql_string
from audit.errors import InputError
from audit.formats import Format, IngestOptions, Sample, by_name, registry
from audit.tokens import TokenCounter

RAW_CAP = 4000           # characters of a rejected record's text kept in ingest_rejects
SNIFF_BYTES = 256 * 1024  # how much of a file format detection looks at
_SKIPPED_IN_DIRECTORIES = (".md", ".duckdb", ".wal", ".tmp", ".py")


@dataclass
class FileResult:
    path: str
    format: str
    read: int = 0
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    skipped: str | None = None          # why nothing was done (already ingested, empty)
    counted: int = 0                    # calls whose tokens were counted, not logged
    reject_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class IngestSummary:
    files: list[FileResult]

    def total(self, attribute: str) -> int:
        return sum(getattr(f, attribute) for f in self.files)

    def as_dict(self) -> dict:
        totals = {k: self.total(k) for k in ("read", "stored", "duplicate", "rejected", "counted")}
        return {"totals": totals, "files": [f.__dict__ for f in self.files]}


# --------------------------------------------------------------------------- files


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files, globs and directories (recursive) → sorted list of files."""
    files: list[Path] = []
    for given in paths:
        text = str(given)
        path = Path(text)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not any(p.startswith(".") for p in child.relative_to(path).parts) \
                        and not child.name.lower().endswith(_SKIPPED_IN_DIRECTORIES) \
                        and not _inside_saved_dataset(child):
                    files.append(child)
        elif path.is_file():
            files.append(path)
        elif any(ch in text for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            if not matches:
                raise InputError(f"no file matches {text}", "check the pattern (quote it so the shell does not expand it)")
            files.extend(expand_paths(matches))
        elif path.exists():
            raise InputError(f"{text} is not a regular file or directory", "pass log files or folders")
        else:
            raise InputError(f"no such file or directory: {text}", "check the path")
    unique: dict[Path, None] = {}
    for f in files:
        unique.setdefault(f.resolve(), None)
    return list(unique)


def _inside_saved_dataset(path: Path) -> bool:
    """A saved Hugging Face dataset is read whole through its ``state.json``: skip its other files."""
    if path.name == "dataset_dict.json":
        return True
    saved = (path.parent / "state.json").is_file() and (path.parent / "dataset_info.json").is_file()
    return saved and path.name != "state.json"


def compression_of(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", "check the file's permissions") from None
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "none"


def read_sample(path: Path, compression: str) -> Sample:
    """The first bytes of the (decompressed) file, its first lines, the first JSON record."""
    try:
        if compression == "gzip":
            import gzip

            with gzip.open(path, "rb") as handle:
                head = handle.read(SNIFF_BYTES)
        elif compression == "zstd":
            import zstandard

            with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as handle:
                head = handle.read(SNIFF_BYTES)
        else:
            with path.open("rb") as handle:
                head = handle.read(SNIFF_BYTES)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}", "check that the file is complete") from None
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = [line for line in text.splitlines()[:50] if line.strip()]
    first_json = None
    for line in lines[:5]:
        try:
            first_json = json.loads(line)
            break
        except ValueError:
            continue
    if first_json is None and text.lstrip()[:1] in ("{", "["):
        try:
            first_json = json.loads(text)
        except ValueError:
            pass
    return Sample(path=path, head=head, lines=lines, first_json=first_json)


def detect_format(sample: Sample) -> Format | None:
    return next((f for f in registry() if f.sniff(sample)), None)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- SQL

_COUNT_FIELDS = [
    ("usage_input", "input token count"),
    ("usage_cache_read", "cache-read token count"),
    ("usage_cache_write", "cache-write token count"),
    ("usage_output", "output token count"),
    ("usage_reasoning", "reasoning token count"),
    ("max_tokens", "max_tokens"),
]
_NUMBER_FIELDS = [("logged_cost_usd", "cost"), ("latency_ms", "latency"), ("temperature", "temperature")]

# The cheat-sheet of log-formats.md, once: what the logged counts mean.
_INPUT_NORMALISED = """CASE WHEN usage_semantics = 'openai' THEN audit_int(usage_input)
     ELSE audit_int(usage_input) + coalesce(audit_int(usage_cache_read), 0) + coalesce(audit_int(usage_cache_write), 0) END"""
_OUTPUT_NORMALISED = """CASE WHEN usage_semantics = 'split' THEN audit_int(usage_output) + coalesce(audit_int(usage_reasoning), 0)
     ELSE audit_int(usage_output) END"""


def _check_sql() -> str:
    """Shared validity checks → the first failing reason, or NULL."""
    whens = [
        "WHEN reject_reason IS NOT NULL THEN reject_reason",
        # A failed call may not say which model it asked for (a batch error
        # line without its input): it costs nothing and is still kept.
        "WHEN (model_logged IS NULL OR trim(model_logged) = '') AND coalesce(status, "
        "CASE WHEN error_message IS NOT NULL THEN 'error' ELSE 'ok' END) = 'ok' THEN 'no model name'",
        "WHEN started_at_raw IS NOT NULL AND audit_ts(started_at_raw) IS NULL "
        "THEN 'unreadable timestamp: ' || left(started_at_raw, 60)",
    ]
    for column, label in _COUNT_FIELDS:
        whens.append(
            f"WHEN audit_bad_count({column}) THEN '{label} is not a whole number >= 0: ' || left({column}, 60)"
        )
    for column, label in _NUMBER_FIELDS:
        whens.append(
            f"WHEN {column} IS NOT NULL AND TRY_CAST({column} AS DOUBLE) IS NULL "
            f"THEN '{label} is not a number: ' || left({column}, 60)"
        )
    whens.append(
        "WHEN status_code IS NOT NULL AND TRY_CAST(TRY_CAST(status_code AS DOUBLE) AS INTEGER) IS NULL "
        "THEN 'status code is not a number: ' || left(status_code, 60)"
    )
    whens.append(
        f"WHEN coalesce(audit_int(usage_cache_read), 0) + coalesce(audit_int(usage_cache_write), 0) > ({_INPUT_NORMALISED}) "
        "THEN 'cached input tokens exceed input tokens'"
    )
    return "CASE " + "\n  ".join(whens) + " END"


ProgressReport = Callable[[str, float], None]   # (phase, percent of that phase)


@dataclass
class _Context:
    con: duckdb.DuckDBPyConnection
    path: Path
    file_id: int
    fmt: Format
    stage_sql: str
    report: ProgressReport | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Report DuckDB's own progress on the running statement, from a side thread."""
        if self.report is None:
            yield
            return
        report = self.report
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.25):
                percent = self.con.query_progress()
                if percent >= 0:
                    report(name, percent)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            yield
        finally:
            stop.set()
            poller.join()
            report(name, 100.0)


def _csv_level_rejects(ctx: _Context) -> list[tuple[int, str, str]]:
    """Lines DuckDB's reader itself refused (bad UTF-8, stray control bytes)."""
    table = f"_line_rejects_{ctx.file_id}"
    exists = ctx.con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND temporary", [table]
    ).fetchone()[0]
    if not exists:
        return []
    rows = ctx.con.execute(
        f"SELECT line, any_value(error_type), any_value(left(csv_line, {RAW_CAP})) FROM {table} "
        "GROUP BY line ORDER BY line"
    ).fetchall()
    ctx.con.execute(f"DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_scan")
    reasons = {
        "INVALID ENCODING": "not valid UTF-8",
        "TOO MANY COLUMNS": "contains a raw control character (U+0001): not valid JSON",
        "LINE SIZE OVER MAXIMUM": "line longer than the maximum accepted",
    }
    return [(line, reasons.get(kind, f"unreadable line ({kind.lower()})"), text) for line, kind, text in rows]


def _renumber(con: duckdb.DuckDBPyConnection, table: str, line_column: str, where: str,
              reader_rejected_lines: list[int]) -> None:
    """Map reader ordinals back to physical line numbers past the rejected lines.

    The reader numbers only the lines it kept. With rejected lines r_1 < r_2 < …,
    a kept line numbered k sits at k + #{i : r_i - i < k}.
    """
    gaps = [line - i for i, line in enumerate(reader_rejected_lines, start=1)]
    con.execute("CREATE OR REPLACE TEMP TABLE _gaps AS SELECT unnest(?::BIGINT[]) AS gap", [gaps])
    con.execute(
        f"UPDATE {table} SET {line_column} = {line_column} + "
        f"(SELECT count(*) FROM _gaps WHERE gap < {table}.{line_column}) WHERE {where}"
    )


def _raw_texts(ctx: _Context, ordinals: list[int]) -> dict[int, str]:
    """The raw text of the given records, by re-reading only when there are rejects."""
    if not ordinals:
        return {}
    rows = ctx.con.execute(
        f"SELECT line_no, left(raw::VARCHAR, {RAW_CAP}) FROM ({ctx.stage_sql}) WHERE line_no IN (SELECT unnest(?::BIGINT[]))",
        [ordinals],
    ).fetchall()
    return dict(rows)


def _store_rejects(ctx: _Context, rejected: list[tuple[int, str]], renumber_table: str,
                   renumber_column: str, renumber_where: str = "true") -> tuple[int, dict[str, int]]:
    """Write rejected records (and reader-level rejects) to ``ingest_rejects``.

    ``rejected`` holds (reader ordinal, reason). When DuckDB's reader refused
    lines itself, the ordinals kept in ``renumber_table.renumber_column``
    (rows matching ``renumber_where``) are mapped back to physical lines.
    """
    con = ctx.con
    raw = _raw_texts(ctx, [line for line, _ in rejected])
    reader_rejects = _csv_level_rejects(ctx)
    rows = [(line, reason, raw.get(line)) for line, reason in rejected]
    if reader_rejects:
        reader_rejected_lines = [line for line, _, _ in reader_rejects]
        _renumber(con, renumber_table, renumber_column, renumber_where, reader_rejected_lines)
        # the same mapping for the rejected rows we are about to write
        gaps = [line - i for i, line in enumerate(reader_rejected_lines, start=1)]
        rows = [(line + sum(g < line for g in gaps), reason, text) for line, reason, text in rows]
        rows += reader_rejects
    if rows:
        con.executemany(
            "INSERT INTO ingest_rejects VALUES (?, ?, ?, ?, ?)",
            [(ctx.file_id, str(ctx.path), line, reason, text) for line, reason, text in rows],
        )
    reasons: dict[str, int] = {}
    for _, reason, _ in rows:
        key = reason.split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    return len(rows), reasons


def _count_missing_tokens(con: duckdb.DuckDBPyConnection, file_id: int, counter: TokenCounter) -> int:
    """Count tokens with tiktoken for this file's calls that logged no usage."""
    todo = con.execute(
        "SELECT source_line, model_logged, messages, response_text FROM requests "
        "WHERE file_id = ? AND tokens_source = 'pending'",
        [file_id],
    ).fetchall()
    if not todo:
        return 0
    # source_line identifies a record within a file (the formats' contract).
    if len({row[0] for row in todo}) != len(todo):
        raise AssertionError("a format produced two records with the same line_no")
    counts = counter.count_chats([(model, messages, text) for _, model, messages, text in todo])
    table = pa.table(
        {
            "line_no": pa.array([row[0] for row in todo], pa.int64()),
            "counted_input": pa.array([c[0] for c in counts], pa.int64()),
            "counted_output": pa.array([c[1] for c in counts], pa.int64()),
        }
    )
    con.complete()
    con.register("_counted", table)
    con.execute(
        """UPDATE requests SET
               input_tokens = coalesce(requests.input_tokens, k.counted_input),
               cached_input_tokens = coalesce(requests.cached_input_tokens, CASE WHEN k.counted_input IS NOT NULL THEN 0 END),
               cache_write_tokens = coalesce(requests.cache_write_tokens, CASE WHEN k.counted_input IS NOT NULL THEN 0 END),
               output_tokens = coalesce(requests.output_tokens, k.counted_output),
               reasoning_tokens = coalesce(requests.reasoning_tokens, CASE WHEN k.counted_output IS NOT NULL THEN 0 END),
               tokens_source = CASE
                   WHEN requests.input_tokens IS NULL AND requests.output_tokens IS NULL
                   THEN CASE WHEN coalesce(k.counted_input, k.counted_output) IS NULL THEN 'none' ELSE 'counted' END
                   ELSE 'logged+counted' END
           FROM _counted k
           WHERE requests.file_id = ? AND requests.source_line = k.line_no AND requests.tokens_source = 'pending'""",
        [file_id],
    )
    con.unregister("_counted")
    return len(todo)


def _ingest_requests(ctx: _Context, fmt_name: str, sampled_fraction: float, counter: TokenCounter) -> FileResult:
    """One pass writes every record into ``requests``; light passes then move
    rejects and duplicates out and count missing tokens (no staging copy of
    the prompts: on a 10 GB file that copy spilled to disk and tripled the time)."""
    con = ctx.con
    result = FileResult(path=str(ctx.path), format=fmt_name)
    file_id = ctx.file_id
    with ctx.phase("reading"):
        inserted = con.execute(
            f"""INSERT INTO requests BY NAME
            SELECT request_id, native_id, {file_id} AS file_id, line_no AS source_line,
                   {sql_string(fmt_name)} AS source_format,
                   audit_ts(started_at_raw) AS started_at,
                   coalesce(lower(provider), audit_provider_for(model_logged)) AS provider,
                   model_logged, audit_normalize_model(model_logged) AS model,
                   user_id, session_id, prompt_name, prompt_version, messages, response_text,
                   input_norm AS input_tokens,
                   CASE WHEN input_norm IS NOT NULL THEN coalesce(audit_int(usage_cache_read), 0) END AS cached_input_tokens,
                   CASE WHEN input_norm IS NOT NULL THEN coalesce(audit_int(usage_cache_write), 0) END AS cache_write_tokens,
                   output_norm AS output_tokens,
                   CASE WHEN output_norm IS NOT NULL THEN coalesce(audit_int(usage_reasoning), 0) END AS reasoning_tokens,
                   CASE WHEN input_norm IS NOT NULL AND output_norm IS NOT NULL THEN 'logged'
                        WHEN call_status = 'ok' THEN 'pending'
                        WHEN input_norm IS NULL AND output_norm IS NULL THEN 'none'
                        ELSE 'logged' END AS tokens_source,
                   TRY_CAST(logged_cost_usd AS DOUBLE) AS logged_cost_usd,
                   TRY_CAST(latency_ms AS DOUBLE) AS latency_ms,
                   call_status AS status,
                   TRY_CAST(TRY_CAST(status_code AS DOUBLE) AS INTEGER) AS status_code, error_message,
                   coalesce(is_batch, false) AS is_batch, service_tier,
                   TRY_CAST(temperature AS DOUBLE) AS temperature, audit_int(max_tokens) AS max_tokens,
                   {float(sampled_fraction)} AS sampled_fraction, metadata, tools,
                   why AS ingest_reject_reason
            FROM (
                SELECT *, {_check_sql()} AS why,
                       {_INPUT_NORMALISED} AS input_norm,
                       {_OUTPUT_NORMALISED} AS output_norm,
                       CASE WHEN status IS NOT NULL THEN status WHEN error_message IS NOT NULL THEN 'error' ELSE 'ok' END
                           AS call_status
                FROM (SELECT * EXCLUDE (raw),
                             -- records without an id are identified by their content (only they are hashed)
                             md5({sql_string(fmt_name)} || ':' ||
                                 CASE WHEN dedupe_key IS NULL THEN md5(raw::VARCHAR) ELSE dedupe_key END) AS request_id
                      FROM ({ctx.stage_sql})))"""
        ).fetchall()[0][0]
    this_file = f"requests.file_id = {file_id}"
    # Rejects out (their raw text is re-read from the file only when there are some).
    rejected = con.execute(
        f"SELECT source_line, ingest_reject_reason FROM requests WHERE {this_file} "
        "AND ingest_reject_reason IS NOT NULL ORDER BY source_line"
    ).fetchall()
    if rejected:
        con.execute(f"DELETE FROM requests WHERE {this_file} AND ingest_reject_reason IS NOT NULL")
    result.rejected, result.reject_reasons = _store_rejects(ctx, rejected, "requests", "source_line", this_file)
    result.read = inserted + result.rejected - len(rejected)
    # Duplicates out: calls already in the ledger from other files, and earlier
    # copies within this file (exports re-emit updated records: the last wins).
    with ctx.phase("de-duplicating"):
        con.execute(
            f"""DELETE FROM requests WHERE {this_file} AND (
                    request_id IN (SELECT request_id FROM requests WHERE file_id <> {file_id})
                    OR (request_id, source_line) IN (
                        SELECT (request_id, source_line) FROM (
                            SELECT request_id, source_line,
                                   source_line < max(source_line) OVER (PARTITION BY request_id) AS superseded
                            FROM requests WHERE file_id = {file_id}
                              AND request_id IN (SELECT request_id FROM requests WHERE file_id = {file_id}
                                                 GROUP BY request_id HAVING count(*) > 1))
                        WHERE superseded))"""
        )
    result.stored = con.execute(f"SELECT count(*) FROM requests WHERE {this_file}").fetchall()[0][0]
    result.duplicate = result.read - result.stored - result.rejected
    result.counted = _count_missing_tokens(con, file_id, counter)
    return result


def _ingest_batch_inputs(ctx: _Context, fmt_name: str) -> FileResult:
    con = ctx.con
    result = FileResult(path=str(ctx.path), format=fmt_name)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _binputs AS SELECT * EXCLUDE (raw) FROM ({ctx.stage_sql})")
    staged = con.execute("SELECT count(*) FROM _binputs").fetchone()[0]
    rejected = con.execute(
        "SELECT line_no, reject_reason FROM _binputs WHERE reject_reason IS NOT NULL ORDER BY line_no").fetchall()
    result.rejected, result.reject_reasons = _store_rejects(ctx, rejected, "_binputs", "line_no")
    result.read = staged + (result.rejected - con.execute("SELECT count(*) FROM _binputs WHERE reject_reason IS NOT NULL").fetchone()[0])
    result.stored = con.execute(
        "INSERT INTO batch_requests SELECT ?, line_no, custom_id, body FROM _binputs WHERE reject_reason IS NULL",
        [ctx.file_id],
    ).fetchone()[0]
    # Outputs ingested before their input get their prompt now.
    con.execute(
        """UPDATE requests SET messages = json_extract(b.body, '$.messages'),
               tools = CASE WHEN json_array_length(b.body, '$.tools') > 0 THEN json_extract(b.body, '$.tools') END,
               temperature = TRY_CAST(b.body ->> 'temperature' AS DOUBLE),
               max_tokens = audit_int(coalesce(b.body ->> 'max_completion_tokens', b.body ->> 'max_tokens'))
        FROM (SELECT custom_id, any_value(body) AS body FROM _binputs WHERE reject_reason IS NULL GROUP BY custom_id) b
        WHERE requests.source_format = 'openai-batch-output' AND requests.messages IS NULL
          AND requests.native_id = b.custom_id"""
    )
    con.execute("DROP TABLE _binputs")
    return result


# --------------------------------------------------------------------------- driver


def _forget_path(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """--replace: remove what earlier versions of this path stored."""
    ids = [r[0] for r in con.execute("SELECT file_id FROM ingest_files WHERE path = ? AND NOT replaced", [path]).fetchall()]
    if not ids:
        return
    for table in ("requests", "ingest_rejects", "batch_requests"):
        con.execute(f"DELETE FROM {table} WHERE file_id IN (SELECT unnest(?::INTEGER[]))", [ids])
    con.execute("UPDATE ingest_files SET replaced = true WHERE file_id IN (SELECT unnest(?::INTEGER[]))", [ids])


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    *,
    forced_format: str | None = None,
    options: IngestOptions | None = None,
    sampled_fraction: float = 1.0,
    replace: bool = False,
    counter: TokenCounter | None = None,
    report: ProgressReport | None = None,
) -> FileResult:
    options = options or IngestOptions()
    counter = counter or TokenCounter()
    options = IngestOptions(mapping=options.mapping, default_model=options.default_model,
                            compression=compression_of(path))
    size = path.stat().st_size

    def already_ingested(digest: str) -> FileResult | None:
        same = con.execute(
            "SELECT path FROM ingest_files WHERE sha256 = ? AND NOT replaced ORDER BY file_id LIMIT 1", [digest]
        ).fetchall()
        if same and not (replace and same[0][0] == str(path)):
            where = "" if same[0][0] == str(path) else f" (same content as {same[0][0]})"
            return FileResult(path=str(path), format="-", skipped=f"already ingested{where}")
        return None

    # A file ingested before (same path and size) is most likely unchanged: hash
    # it first and skip it. A new file is hashed on a side thread while DuckDB
    # reads it (hashing a 10 GB file alone takes ~10 s), and checked before commit.
    seen_before = con.execute(
        "SELECT count(*) FROM ingest_files WHERE path = ? AND size_bytes = ? AND NOT replaced", [str(path), size]
    ).fetchall()[0][0]
    hashing = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    digest_future = hashing.submit(sha256_of, path)
    hashing.shutdown(wait=False)
    if seen_before and (skipped := already_ingested(digest_future.result())):
        return skipped
    sample = read_sample(path, options.compression)
    options.sample = sample
    if not sample.head.strip(b"\xef\xbb\xbf \t\r\n"):
        fmt_name, fmt = "empty", None
    else:
        fmt = by_name(forced_format) if forced_format else detect_format(sample)
        if fmt is None:
            raise InputError(
                f"cannot tell the log format of {path}",
                "force one with --format (see `audit ingest --help`) or map columns with --map",
            )
        fmt_name = fmt.name
    con.execute("BEGIN TRANSACTION")
    try:
        if replace:
            _forget_path(con, str(path))
        file_id = con.execute("SELECT nextval('ingest_files_seq')").fetchone()[0]
        if fmt is None:
            result = FileResult(path=str(path), format=fmt_name)
        else:
            ctx = _Context(con, path, file_id, fmt, fmt.stage_sql(con, path, options, file_id), report)
            if fmt.target == "batch_input":
                result = _ingest_batch_inputs(ctx, fmt_name)
            else:
                result = _ingest_requests(ctx, fmt_name, sampled_fraction, counter)
        digest = digest_future.result()
        if skipped := already_ingested(digest):
            con.execute("ROLLBACK")
            return skipped
        con.execute(
            "INSERT INTO ingest_files (file_id, path, sha256, size_bytes, format, sampled_fraction, ingested_at, "
            "rows_read, rows_stored, rows_duplicate, rows_rejected) VALUES (?, ?, ?, ?, ?, ?, now()::TIMESTAMP, ?, ?, ?, ?)",
            [file_id, str(path), digest, size, fmt_name, sampled_fraction,
             result.read, result.stored, result.duplicate, result.rejected],
        )
        con.execute("COMMIT")
    except duckdb.Error as exc:
        con.execute("ROLLBACK")
        raise InputError(f"cannot ingest {path} as {fmt_name}: {str(exc).splitlines()[0]}",
                         "check the file, or force another --format") from None
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return result


def ingest(
    con: duckdb.DuckDBPyConnection,
    paths: Iterable[str | Path],
    *,
    forced_format: str | None = None,
    mapping: dict[str, str] | None = None,
    default_model: str | None = None,
    sampled_fraction: float = 1.0,
    replace: bool = False,
    on_file: Callable[[FileResult], None] | None = None,
    on_progress: Callable[[Path, str, float], None] | None = None,
) -> IngestSummary:
    """Ingest every file under ``paths``; Batch API inputs before outputs."""
    if not 0 < sampled_fraction <= 1:
        from audit.errors import ConfigError

        raise ConfigError(f"--sampled-fraction must be in (0, 1], got {sampled_fraction}",
                          "e.g. 0.01 for an export holding 1% of calls")
    if forced_format and by_name(forced_format) is None:
        from audit.errors import ConfigError

        raise ConfigError(f"unknown format {forced_format!r}",
                          "use one of: " + ", ".join(f.name for f in registry()))
    files = expand_paths(paths)
    if not files:
        raise InputError("no files to ingest", "pass log files, globs or folders")
    # Batch inputs first, so outputs in the same run find their prompts.
    files.sort(key=lambda p: (0 if "input" in p.name.lower() and "batch" in str(p).lower() else 1, str(p)))
    options = IngestOptions(mapping=mapping or {}, default_model=default_model)
    counter = TokenCounter()
    results = []
    for path in files:
        report = (lambda phase, percent, path=path: on_progress(path, phase, percent)) if on_progress else None
        result = ingest_file(con, path, forced_format=forced_format, options=options,
                             sampled_fraction=sampled_fraction, replace=replace, counter=counter, report=report)
        results.append(result)
        if on_file:
            on_file(result)
    return IngestSummary(results)
