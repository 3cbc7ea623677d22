"""``audit review export`` / ``audit review import``: thin typer functions over ``audit.review``.

stdout is data (the page's path; the import summary with ``--json``);
messages and tables go to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from audit import db as audit_db
from audit.cli_options import ExistingDbOption as DbOption
from audit.cli_options import JsonOption

review_app = typer.Typer(
    help="Blind human review: export a page where people pick the better answer (1-4 keys), import their verdicts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

@review_app.command("export")
def export(
    *,
    db: DbOption = Path(audit_db.DEFAULT_DB),
    sample: Annotated[Optional[str], typer.Option("--sample", help="The sample set (e.g. n500-s7). Default: the latest drawn one with replayed answers.")] = None,
    candidate: Annotated[Optional[list[str]], typer.Option("--candidate", "-c", help="Only this candidate's answers (repeatable). Default: every candidate with answers.")] = None,
    per_template: Annotated[Optional[int], typer.Option("--per-template", help="Only the first K answered requests of each template and candidate, in draw order.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the order of the items and which side (A or B) each answer is on.")] = 0,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the page (a file or a folder). Default: reports/review-<export_id>.html.")] = None,
) -> None:
    """Write a blind review page: each item shows the conversation and two answers, A and B.

    One side is production's answer and the other a candidate's, at random; the page names neither.
    Reviewers open it in any browser (no network needed), press 1 (A better), 2 (B better),
    3 (both fine) or 4 (both bad), and download their verdicts as JSON or CSV for `audit review import`.
    Writes `review_items` (what each item showed where); prints the page's path on stdout.
    """
    from audit import console
    from audit.review import export_review

    con = audit_db.connect(db, must_exist=True)  # review needs replays: never create a database here
    result = export_review(con, out=out, sample_set_id=sample, candidates=candidate, per_template=per_template, seed=seed)
    counts = ", ".join(f"{name} {n:,}" for name, n in result["per_candidate"].items())
    console.err.print(
        f"review export [bold]{result['export_id']}[/]: {result['items']:,} items from {result['templates']:,} templates "
        f"of {result['sample_set_id']} ({counts}); open the page in a browser, then `audit review import` the download",
        markup=True,
    )
    console.out.print(result["path"], markup=False, highlight=False)


def _render_summary(summary: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from audit.console import err

    replaced = f" ({summary['replaced']:,} replaced an earlier import)" if summary["replaced"] else ""
    err.print(f"imported [bold]{summary['items_imported']:,}[/] verdicts by {escape(', '.join(summary['reviewers']))} "
              f"for export {escape(', '.join(summary['export_ids']))}{replaced}")
    outcomes = Table(title="outcomes of this file, unblinded", title_justify="left", header_style="bold")
    for column in ("candidate", "reviewed", "candidate better", "original better", "both fine", "both bad", "passed"):
        outcomes.add_column(column, justify="left" if column == "candidate" else "right")
    for row in summary["per_candidate"]:
        outcomes.add_row(escape(row["candidate"]), f"{row['reviewed']:,}", f"{row['candidate_better']:,}",
                         f"{row['original_better']:,}", f"{row['both_fine']:,}", f"{row['both_bad']:,}",
                         f"{row['passed']:,} ({row['pass_rate']:.0%})")
    err.print(outcomes)
    agreement = Table(title="automatic verdicts vs humans, same requests (pass/fail)", title_justify="left",
                      header_style="bold")
    for column in ("sample", "candidate", "source", "n", "agreement", "Cohen's kappa"):
        agreement.add_column(column, justify="right" if column in ("n", "agreement", "Cohen's kappa") else "left")
    for row in summary["agreement"]:
        agreement.add_row(escape(row["sample_set_id"]), escape(row["candidate"]), row["source"], f"{row['n']:,}",
                          "-" if row["agreement"] is None else f"{row['agreement']:.0%}",
                          "-" if row["kappa"] is None else f"{row['kappa']:.2f}")
    err.print(agreement)


@review_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="The JSON or CSV the review page downloaded.", show_default=False)],
    *,
    db: DbOption = Path(audit_db.DEFAULT_DB),
    json: JsonOption = False,
) -> None:
    """Store a reviewer's verdicts (unblinded) as `reviews` and human `verdicts`; print the outcomes.

    Re-importing a file replaces its verdicts, never duplicates them. Human verdicts override the
    automatic ones in the decisions. The summary also gives how often the automatic checks and the
    LLM judge agreed with the humans on the same requests (agreement and Cohen's kappa).
    """
    from audit import console
    from audit.review import import_review

    summary = import_review(audit_db.connect(db, must_exist=True), file)
    _render_summary(summary)
    if json:
        console.print_json(summary)
