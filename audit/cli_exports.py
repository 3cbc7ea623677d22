"""`audit export-dataset` and `audit export-routing`: thin typer functions over ``audit.exports``.

Registered in ``audit.cli`` (one line each). stdout carries the paths written
(or ``--json``); the summary goes to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from audit import db as audit_db
from audit.cli_options import ExistingDbOption as DbOption
from audit.cli_options import JsonOption, SampleOption

def export_dataset(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write (new, empty, or an earlier export-dataset folder, which is replaced).", show_default=False)],
    *,
    db: DbOption = Path(audit_db.DEFAULT_DB),
    sample: SampleOption = None,
    json: JsonOption = False,
) -> None:
    """Export the replayed sample as a distillation set: one row per request × candidate.

    Each row: the conversation, the production answer, the candidate's answer and its final verdict, and the
    real calls the request stands for (`weight`). Written as a Hugging Face dataset (`DIR/hf`, load it with
    `datasets.load_from_disk`) and as `DIR/distill.parquet`. Run `audit replay` (and `audit judge`) first.
    """
    from audit import console
    from audit.exports import export_dataset as run_export

    con = audit_db.connect(db, must_exist=True)
    with console.progress_bar("exporting the dataset", None, show_count=False):
        summary = run_export(con, out_dir, sample_set_id=sample)
    per_candidate = ", ".join(f"{name} {rows:,}" for name, rows in summary["candidates"].items())
    console.err.print(
        f"sample set {summary['sample_set_id']}: {summary['rows']:,} rows = {summary['requests']:,} requests × "
        f"candidates ({per_candidate}); {summary['answered']:,} answered, {summary['judged']:,} judged, "
        f"{summary['passed']:,} passed", markup=False)
    if not summary["judged"]:
        console.err.print("no verdicts yet: `passed` is empty (run `audit judge` to fill it)", markup=False)
    if json:
        console.print_json(summary)
        return
    console.out.print(summary["hf_path"], markup=False)
    console.out.print(summary["parquet_path"], markup=False)


def export_routing(
    *,
    out: Annotated[Path, typer.Option("--out", help="The YAML file to write (an earlier routing plan there is replaced).")] = Path("reports") / "routing.yaml",
    db: DbOption = Path(audit_db.DEFAULT_DB),
    sample: SampleOption = None,
    json: JsonOption = False,
) -> None:
    """Write a routing plan a LiteLLM gateway can load: per template, the model to use and the evidence.

    Templates whose candidate was judged 'switch' route to it; every other template keeps its model. Callers
    send `model: tmpl-<template_id>`. The `llm_spend_audit` section holds the pass rates, intervals, spend and
    cache/batch recommendations. Run `audit replay` and `audit judge` first.
    """
    from audit import console
    from audit.exports import write_routing_plan

    con = audit_db.connect(db, must_exist=True)
    summary = write_routing_plan(con, out, sample_set_id=sample)
    console.err.print(
        f"sample set {summary['sample_set_id']}: {summary['templates']} templates, {summary['switched']} switched, "
        f"{summary['kept']} keep their model; {len(summary['models'])} models in model_list", markup=False)
    if not summary["judged"]:
        console.err.print("no decisions yet: every template keeps its model (run `audit judge` to decide switches)",
                          markup=False)
    if json:
        console.print_json(summary)
        return
    console.out.print(summary["path"], markup=False)
