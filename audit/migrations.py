"""Numbered schema migrations, applied in order when the database is opened.

A migration, once shipped, is never edited: change the schema by adding the
next number. ``schema_migrations`` records which ones a database has.

Tables (the stage that owns each is named in its module's docstring):

- ``ingest_files``: one row per ingested file version (path + sha256).
- ``requests``: the normalised ledger, one row per LLM call.
- ``ingest_rejects``: records that could not be stored, with file, line and reason.
- ``batch_requests``: OpenAI Batch API *input* lines, kept so output lines
  ingested before or after them can be joined on ``custom_id``.
- ``replay_runs`` / ``replays``: candidate models tried on the sampled requests.
- ``verdicts``, ``judge_calls``, ``decisions``, ``movable_spend``, ``judge_calibrations``: judging them;
  ``review_items``, ``reviews``: blind human review.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: list[tuple[int, str, Migration]] = []


def migration(number: int, name: str) -> Callable[[Migration], Migration]:
    def register(fn: Migration) -> Migration:
        MIGRATIONS.append((number, name, fn))
        return fn

    return register


@migration(1, "ingest ledger")
def _m001_ingest(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE SEQUENCE ingest_files_seq START 1;
        CREATE TABLE ingest_files (
            file_id          INTEGER PRIMARY KEY DEFAULT nextval('ingest_files_seq'),
            path             VARCHAR NOT NULL,   -- absolute path as given
            sha256           VARCHAR NOT NULL,   -- of the bytes on disk
            size_bytes       BIGINT NOT NULL,
            format           VARCHAR NOT NULL,
            sampled_fraction DOUBLE NOT NULL,    -- share of real traffic the export holds
            ingested_at      TIMESTAMP NOT NULL,
            rows_read        BIGINT NOT NULL,    -- non-blank records seen
            rows_stored      BIGINT NOT NULL,
            rows_duplicate   BIGINT NOT NULL,    -- already in the ledger (same request_id)
            rows_rejected    BIGINT NOT NULL,
            replaced         BOOLEAN NOT NULL DEFAULT false  -- superseded by --replace
        );
        CREATE TABLE requests (
            -- md5(format, native id or raw record). Unique, enforced by ingest's
            -- anti-join rather than an index: the index halves bulk-insert speed.
            request_id          VARCHAR NOT NULL,
            native_id           VARCHAR,              -- the source's own id (chatcmpl-…, custom_id, uuid)
            file_id             INTEGER NOT NULL,
            source_line         BIGINT NOT NULL,      -- 1-based line or row in the file
            source_format       VARCHAR NOT NULL,
            started_at          TIMESTAMP,            -- UTC
            provider            VARCHAR,
            model_logged        VARCHAR,              -- as the source wrote it
            model               VARCHAR,              -- normalised: lower case, no provider prefix, no date suffix
            user_id             VARCHAR,
            session_id          VARCHAR,
            prompt_name         VARCHAR,              -- explicit template name, where the source has one
            prompt_version      VARCHAR,
            messages            JSON,                 -- [{role, content}], system prompt first
            response_text       VARCHAR,
            input_tokens        BIGINT,               -- all input, cached included
            cached_input_tokens BIGINT,
            cache_write_tokens  BIGINT,
            output_tokens       BIGINT,               -- reasoning included
            reasoning_tokens    BIGINT,
            tokens_source       VARCHAR NOT NULL,     -- 'logged' | 'counted' | 'none'
            logged_cost_usd     DOUBLE,
            latency_ms          DOUBLE,
            status              VARCHAR NOT NULL,     -- 'ok' | 'error'
            status_code         INTEGER,
            error_message       VARCHAR,
            is_batch            BOOLEAN NOT NULL,
            service_tier        VARCHAR,
            temperature         DOUBLE,
            max_tokens          BIGINT,
            sampled_fraction    DOUBLE NOT NULL,      -- copied from the file: weight = 1 / fraction
            metadata            JSON
        );
        CREATE TABLE ingest_rejects (
            file_id   INTEGER NOT NULL,
            path      VARCHAR NOT NULL,
            line_no   BIGINT,
            reason    VARCHAR NOT NULL,
            raw       VARCHAR                        -- the record's text, capped
        );
        CREATE TABLE batch_requests (
            file_id   INTEGER NOT NULL,
            line_no   BIGINT NOT NULL,
            custom_id VARCHAR NOT NULL,
            body      JSON NOT NULL
        );
        """
    )


@migration(2, "ingest works inside the ledger")
def _m002_reject_reason(con: duckdb.DuckDBPyConnection) -> None:
    # Ingest writes every record of a file straight into ``requests`` (one
    # pass over a 10 GB file, no staging copy), then moves the rejected ones
    # to ``ingest_rejects`` in the same transaction. Committed rows always
    # have NULL here.
    con.execute("ALTER TABLE requests ADD COLUMN ingest_reject_reason VARCHAR")


@migration(3, "analyze: costs, templates, findings")
def _m003_analyze(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        -- One row per request: its list-price cost and the price it used.
        CREATE TABLE request_costs (
            request_id             VARCHAR NOT NULL,
            priced                 BOOLEAN NOT NULL,
            cost_usd               DOUBLE,    -- NULL when not priced (never a silent 0)
            input_cost_usd         DOUBLE,    -- uncached input
            cached_input_cost_usd  DOUBLE,
            cache_write_cost_usd   DOUBLE,
            output_cost_usd        DOUBLE,
            batch_discount         DOUBLE,    -- fraction taken off (0.5 = half price); 0 when not batch
            price_provider         VARCHAR,
            price_model            VARCHAR,   -- the catalog (or override) model used
            price_valid_from       DATE,      -- start of the price period used
            price_source           VARCHAR,   -- 'genai-prices <version>' | 'override <file>' | 'self-hosted <file>'
            unpriced_reason        VARCHAR
        );
        -- The window monthly figures are computed over (last 30 days of the ledger).
        CREATE TABLE analysis_window (
            window_start TIMESTAMP NOT NULL,
            window_end   TIMESTAMP NOT NULL,
            days         DOUBLE NOT NULL     -- monthly = sum over window / sampled_fraction * 30 / days
        );
        CREATE TABLE templates (
            template_id        VARCHAR PRIMARY KEY,   -- stable across runs
            source             VARCHAR NOT NULL,      -- 'explicit' (prompt name) | 'mined'
            name               VARCHAR NOT NULL,      -- prompt name, or a short readable name
            signature          VARCHAR NOT NULL,      -- the skeleton with slots shown as {slot}
            example_request_id VARCHAR,
            calls              BIGINT,                -- rows in the ledger
            calls_scaled       DOUBLE,                -- / sampled_fraction
            spend_usd          DOUBLE,                -- scaled, whole ledger
            spend_monthly_usd  DOUBLE,                -- scaled, analysis window, per 30 days
            main_model         VARCHAR,
            task_type          VARCHAR,
            task_confidence    DOUBLE,
            task_evidence      JSON,
            tier               VARCHAR                -- small | mid | large
        );
        CREATE TABLE request_templates (
            request_id  VARCHAR NOT NULL,
            template_id VARCHAR NOT NULL,
            slots       JSON                          -- the masked variable values, in order
        );
        CREATE TABLE findings (
            finding_id                   VARCHAR NOT NULL,
            kind                         VARCHAR NOT NULL,  -- exact_cache, near_duplicate_cache, precompute, ...
            status                       VARCHAR NOT NULL,  -- 'found' | 'not-run'
            not_run_reason               VARCHAR,
            template_id                  VARCHAR,
            model                        VARCHAR,
            requests_affected            BIGINT,            -- rows in the ledger
            requests_affected_monthly    DOUBLE,            -- scaled, per 30 days
            spend_affected_monthly_usd   DOUBLE,
            savings_low_monthly_usd      DOUBLE,            -- alone, before stacking
            savings_high_monthly_usd     DOUBLE,
            risk                         VARCHAR,           -- 'none' | 'quality-gated'
            stack_step                   INTEGER,           -- cache 1, precompute 2, batch 3, context 4, model 5, other 6
            stacked_savings_low_monthly_usd  DOUBLE,        -- after the earlier steps took their share
            stacked_savings_high_monthly_usd DOUBLE,
            action                       VARCHAR,
            evidence                     JSON               -- counts, thresholds, example request ids
        );
        CREATE TABLE analysis_runs (
            run_id      INTEGER NOT NULL,
            started_at  TIMESTAMP NOT NULL,
            finished_at TIMESTAMP,
            parameters  JSON
        );
        """
    )


@migration(4, "samples")
def _m004_samples(con: duckdb.DuckDBPyConnection) -> None:
    # Written by ``audit.sample`` (its docstring explains the method). A
    # sample set is keyed by its parameters ('n500-s7'); drawing the same set
    # again replaces its rows in all three tables.
    con.execute(
        """
        -- One row per sample set: the parameters and the totals of the draw.
        CREATE TABLE sample_sets (
            sample_set_id       VARCHAR NOT NULL,   -- 'n{n}-s{seed}' ('-m{min}' when the minimum is not 5)
            n_requested         BIGINT NOT NULL,
            seed                BIGINT NOT NULL,
            min_per_template    BIGINT NOT NULL,
            method              VARCHAR NOT NULL,   -- how strata were allocated and drawn
            template_requests   BIGINT NOT NULL,    -- ledger rows = eligible + excluded
            eligible_requests   BIGINT NOT NULL,    -- the population sampled from
            excluded_requests   BIGINT NOT NULL,
            sampled_requests    BIGINT NOT NULL,
            sampled_everything  BOOLEAN NOT NULL,   -- n reached the whole eligible population
            drawn_at            TIMESTAMP NOT NULL
        );
        -- The sampled requests. Stratum = template; inside it, equal probability.
        CREATE TABLE samples (
            sample_set_id          VARCHAR NOT NULL,
            request_id             VARCHAR NOT NULL,
            template_id            VARCHAR NOT NULL,
            stratum                VARCHAR NOT NULL,   -- the stratum drawn from (today: the template id)
            draw_rank              BIGINT NOT NULL,    -- 1.. in the stratum's seeded order: a prefix is itself an equal-probability sample
            inclusion_probability  DOUBLE NOT NULL,    -- sampled / eligible in the stratum
            weight                 DOUBLE NOT NULL,    -- 1 / inclusion_probability, in ledger rows: sums to the stratum's eligible rows
            traffic_weight         DOUBLE NOT NULL,    -- weight / requests.sampled_fraction: real calls this row stands for
            drawn_at               TIMESTAMP NOT NULL
        );
        -- Requests left out of the population because they cannot be replayed
        -- faithfully, counted per template and reason (one reason per request).
        CREATE TABLE sample_exclusions (
            sample_set_id  VARCHAR NOT NULL,
            template_id    VARCHAR,                 -- NULL: the request has no template (reason 'no_template')
            reason         VARCHAR NOT NULL,        -- failed_call | no_prompt | tool_use | image_or_audio | other_content | no_response | no_template
            requests       BIGINT NOT NULL,         -- ledger rows
            spend_usd      DOUBLE NOT NULL          -- their list-price spend, scaled by 1 / sampled_fraction
        );
        """
    )


@migration(5, "tools offered to the model")
def _m005_tools(con: duckdb.DuckDBPyConnection) -> None:
    # The request's tool (function) definitions, as logged. A call that
    # offered tools cannot be replayed faithfully even when it was answered
    # in plain text: the sample excludes it.
    con.execute("ALTER TABLE requests ADD COLUMN tools JSON")


@migration(6, "replays")
def _m006_replays(con: duckdb.DuckDBPyConnection) -> None:
    # Written by ``audit.replay`` (its docstring explains resuming and pricing).
    con.execute(
        """
        CREATE SEQUENCE replay_runs_seq START 1;
        -- One row per `audit replay` of one candidate on one sample set.
        CREATE TABLE replay_runs (
            run_id              BIGINT PRIMARY KEY DEFAULT nextval('replay_runs_seq'),
            sample_set_id       VARCHAR NOT NULL,
            candidate           VARCHAR NOT NULL,   -- the name given (NAME=...)
            engine              VARCHAR NOT NULL,   -- vllm | openai | fake
            model               VARCHAR NOT NULL,
            spec                VARCHAR NOT NULL,   -- ENGINE:MODEL?options (never a secret: secrets are refused as options)
            pricing             VARCHAR NOT NULL,   -- 'catalog' | 'options' | 'gpu-hour'
            input_price_per_m   DOUBLE,             -- USD per 1M tokens (gpu-hour: set when the run ends, from its throughput)
            output_price_per_m  DOUBLE,
            gpu_hourly_usd      DOUBLE,             -- gpu-hour pricing: the rate given
            price_source        VARCHAR,            -- catalog source and model, or 'candidate options', or the formula
            device              VARCHAR,            -- GPU/CPU name, or the server's address
            engine_version      VARCHAR,
            context_window      BIGINT,
            started_at          TIMESTAMP NOT NULL,
            startup_seconds     DOUBLE,             -- loading the model / engine, not in wall_seconds
            finished_at         TIMESTAMP,
            status              VARCHAR NOT NULL,   -- running | finished | stopped_at_budget | interrupted | failed
            requests_planned    BIGINT NOT NULL,
            requests_ok         BIGINT NOT NULL DEFAULT 0,
            requests_error      BIGINT NOT NULL DEFAULT 0,
            prompt_tokens       BIGINT NOT NULL DEFAULT 0,   -- as the candidate counted them
            output_tokens       BIGINT NOT NULL DEFAULT 0,
            wall_seconds        DOUBLE,             -- first request sent → last answer
            tokens_per_second   DOUBLE,             -- (prompt + output tokens) / wall_seconds
            output_tokens_per_second DOUBLE,
            cost_usd            DOUBLE,             -- Σ replays.cost_usd of the run
            expected_cost_usd   DOUBLE,             -- the estimate printed before the run
            worst_case_cost_usd DOUBLE
        );
        -- One row per sample set × request × candidate: the candidate's answer
        -- or the error. A rerun of `audit replay` skips rows that are 'ok' or a
        -- final error and replaces the others (INSERT OR REPLACE on the key).
        CREATE TABLE replays (
            sample_set_id       VARCHAR NOT NULL,
            request_id          VARCHAR NOT NULL,
            candidate           VARCHAR NOT NULL,
            run_id              BIGINT NOT NULL,
            status              VARCHAR NOT NULL,   -- ok | error
            error_kind          VARCHAR,            -- timeout | rate_limited | server_error | connection | engine_error (retried) | context_overflow | bad_request | refusal
            error_message       VARCHAR,
            response_text       VARCHAR,
            finish_reason       VARCHAR,            -- stop | length | ...
            prompt_tokens       BIGINT,
            output_tokens       BIGINT,
            latency_ms          DOUBLE,             -- HTTP only; NULL inside an offline batch
            cost_usd            DOUBLE,             -- at the run's prices; NULL until a gpu-hour run has its throughput
            temperature         DOUBLE,             -- as sent (NULL: the engine's default)
            max_tokens          BIGINT,             -- as sent
            truncated_messages  BIGINT NOT NULL,    -- oldest turns dropped to fit the context window
            attempts            BIGINT NOT NULL,
            finished_at         TIMESTAMP NOT NULL,
            PRIMARY KEY (sample_set_id, request_id, candidate)
        );
        """
    )


@migration(7, "verdicts")
def _m007_verdicts(con: duckdb.DuckDBPyConnection) -> None:
    # Written by ``audit.judge`` (checks, LLM judge, decisions) and
    # ``audit.review`` (human review export and import).
    con.execute(
        """
        -- Every judgement of one candidate answer: an automatic check, the LLM
        -- judge's pairwise verdict, or a human review. Rewritten per source.
        CREATE TABLE verdicts (
            sample_set_id   VARCHAR NOT NULL,
            request_id      VARCHAR NOT NULL,
            candidate       VARCHAR NOT NULL,
            source          VARCHAR NOT NULL,   -- 'check' | 'judge' | 'human'
            metric          VARCHAR NOT NULL,   -- label_match, json_valid, ..., embedding_similarity, pairwise, human
            score           DOUBLE,             -- the metric's value (NULL when it has none)
            threshold       DOUBLE,             -- the bar the score was held to
            passed          BOOLEAN,            -- NULL: could not be judged
            gating          BOOLEAN NOT NULL,   -- counts toward the request's pass (others are shown only)
            reason          VARCHAR,            -- one line: why it failed, or the judge's explanation
            judged_at       TIMESTAMP NOT NULL,
            PRIMARY KEY (sample_set_id, request_id, candidate, source, metric)
        );
        -- The LLM judge's calls: each pair judged twice, positions swapped.
        -- Resumable like replays: keyed, stored as each call finishes.
        CREATE TABLE judge_calls (
            sample_set_id   VARCHAR NOT NULL,
            request_id      VARCHAR NOT NULL,
            candidate       VARCHAR NOT NULL,
            judge           VARCHAR NOT NULL,   -- the judge's name (NAME=ENGINE:MODEL)
            judge_spec      VARCHAR NOT NULL,
            original_position VARCHAR NOT NULL, -- 'A' | 'B': where the production answer was shown
            status          VARCHAR NOT NULL,   -- ok | error
            preferred       VARCHAR,            -- 'original' | 'candidate' | 'tie' (unblinded), NULL when unparsable
            explanation     VARCHAR,
            response_text   VARCHAR,
            error_kind      VARCHAR,
            error_message   VARCHAR,
            prompt_tokens   BIGINT,
            output_tokens   BIGINT,
            cost_usd        DOUBLE,
            judged_at       TIMESTAMP NOT NULL,
            PRIMARY KEY (sample_set_id, request_id, candidate, judge, original_position)
        );
        -- A blind review page: which side each candidate answer was shown on.
        CREATE TABLE review_items (
            export_id       VARCHAR NOT NULL,
            item_id         VARCHAR NOT NULL,   -- what the page and its download call the item
            sample_set_id   VARCHAR NOT NULL,
            request_id      VARCHAR NOT NULL,
            candidate       VARCHAR NOT NULL,
            candidate_side  VARCHAR NOT NULL,   -- 'A' | 'B'
            position        BIGINT NOT NULL,    -- order on the page (shuffled)
            exported_at     TIMESTAMP NOT NULL,
            PRIMARY KEY (export_id, item_id)
        );
        -- Human verdicts, unblinded on import. Override automatic ones in decisions.
        CREATE TABLE reviews (
            export_id       VARCHAR NOT NULL,
            item_id         VARCHAR NOT NULL,
            sample_set_id   VARCHAR NOT NULL,
            request_id      VARCHAR NOT NULL,
            candidate       VARCHAR NOT NULL,
            reviewer        VARCHAR NOT NULL,
            choice          VARCHAR NOT NULL,   -- as cast: 'A' | 'B' | 'both_fine' | 'both_bad'
            outcome         VARCHAR NOT NULL,   -- 'candidate_better' | 'original_better' | 'both_fine' | 'both_bad'
            passed          BOOLEAN NOT NULL,   -- the candidate is good enough: candidate_better or both_fine
            reviewed_at     TIMESTAMP,
            source_file     VARCHAR NOT NULL,
            imported_at     TIMESTAMP NOT NULL,
            PRIMARY KEY (export_id, item_id, reviewer)
        );
        -- Per sample set, template and candidate: the evidence and the decision.
        CREATE TABLE decisions (
            sample_set_id      VARCHAR NOT NULL,
            template_id        VARCHAR NOT NULL,
            candidate          VARCHAR NOT NULL,
            evidence           VARCHAR NOT NULL,   -- what decided the requests: e.g. 'checks', 'judge', 'human+checks'
            judged             BIGINT NOT NULL,    -- requests with a pass/fail
            passed             BIGINT NOT NULL,
            pass_rate          DOUBLE,
            ci_low             DOUBLE,             -- 95% Wilson interval of the pass rate
            ci_high            DOUBLE,
            threshold          DOUBLE NOT NULL,
            decision           VARCHAR NOT NULL,   -- 'switch' | 'keep' | 'insufficient evidence'
            template_spend_usd DOUBLE,             -- templates.spend_usd (full traffic, whole ledger)
            top_failures       JSON,               -- [{reason, count}] most frequent first
            decided_at         TIMESTAMP NOT NULL,
            PRIMARY KEY (sample_set_id, template_id, candidate)
        );
        -- Per sample set and candidate: how much of the whole spend could move to it.
        CREATE TABLE movable_spend (
            sample_set_id      VARCHAR NOT NULL,
            candidate          VARCHAR NOT NULL,
            total_spend_usd    DOUBLE NOT NULL,    -- the whole ledger, scaled by 1 / sampled_fraction
            tried_spend_usd    DOUBLE NOT NULL,    -- spend of the templates the candidate was tried on
            switch_spend_usd   DOUBLE NOT NULL,    -- spend of the templates whose decision is 'switch'
            switch_share       DOUBLE,             -- switch_spend_usd / total_spend_usd
            passing_share      DOUBLE,             -- estimated share of spend whose requests pass (sample-weighted)
            passing_share_low  DOUBLE,             -- its 95% interval
            passing_share_high DOUBLE,
            computed_at        TIMESTAMP NOT NULL,
            PRIMARY KEY (sample_set_id, candidate)
        );
        -- `audit judge calibrate`: agreement of a judging method with human labels.
        CREATE TABLE judge_calibrations (
            calibrated_at   TIMESTAMP NOT NULL,
            file            VARCHAR NOT NULL,
            method          VARCHAR NOT NULL,   -- 'checks' or the judge's spec
            pairs           BIGINT NOT NULL,
            accuracy        DOUBLE,             -- on pairs the method did not call a tie
            kappa           DOUBLE,             -- Cohen's kappa, ties counted as disagreement
            tie_rate        DOUBLE
        );
        """
    )


def apply(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Apply every migration the database lacks; return the numbers applied."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(number INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    done = {row[0] for row in con.execute("SELECT number FROM schema_migrations").fetchall()}
    applied = []
    for number, name, fn in sorted(MIGRATIONS, key=lambda m: m[0]):
        if number in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            fn(con)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, now()::TIMESTAMP)", [number, name]
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        applied.append(number)
    return applied
