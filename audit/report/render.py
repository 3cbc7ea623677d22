"""Turn the report's figures into one self-contained HTML file (and a PDF when Chromium is there).

Reads: the tables ``audit.report.build_report`` reads (through it); writes
only files: ``reports/audit-report-<date>.html`` (or ``--out``) and its PDF.

The HTML has no script and loads nothing: CSS, charts (inline SVG drawn by
``audit.report.charts``) and text are all in the file, and a
Content-Security-Policy forbids scripts and any fetch, so a logged prompt
that holds markup can neither run nor call home even if it slipped through
escaping. Jinja2 autoescapes every value; logged text is data, never markup.

Redaction: every field that holds logged text (keys ending in ``_text``, and
``template_name``) passes through ``audit.redact.redact`` unless the caller
turns it off; ``--json`` output goes through the same ``redact_report``.
"""

from __future__ import annotations

import copy
import importlib.resources
import math
import os
import shutil
import subprocess
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import jinja2
from markupsafe import Markup

from audit.errors import AuditError, ConfigError
from audit.redact import redact
from audit.report import charts

TEMPLATE = "report.html.j2"
REPORTS_DIR = Path("reports")
# Where --pdf looks for Chromium, in order; AUDIT_CHROMIUM names another binary.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PDF_TIMEOUT_SECONDS = 120

KIND_NAMES = {
    "exact_cache": "Cache repeated questions",
    "near_duplicate_cache": "Cache near-identical questions",
    "precompute": "Precompute answers for a fixed set of entities",
    "batch_eligible": "Move non-interactive calls to the Batch API",
    "prompt_caching_unused": "Use the provider's prompt caching",
    "context_bloat": "Stop re-sending whole conversation histories",
    "output_verbosity": "Cap answers longer than the task needs",
    "overpowered_model": "Use a smaller model where the task is simple",
}


def _is_text_key(key: str) -> bool:
    return key.endswith("_text") or key == "template_name"


def redact_report(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of the report's figures with every logged text field redacted (see ``audit.redact``)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (redact(v) if isinstance(v, str) and _is_text_key(k) else walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(copy.deepcopy(data))


# --------------------------------------------------------------------------- formatting (the template only formats)


def money(value: float | None, cents: bool | None = None) -> str:
    """Dollars: whole above $100, cents below, two significant digits under a cent ($0.00042)."""
    if value is None:
        return "–"
    if cents is None:
        cents = abs(value) < 100
    if 0 < abs(value) < 0.01:
        digits = min(8, 1 - math.floor(math.log10(abs(value))))
        return f"${value:,.{digits}f}"
    return f"${value:,.2f}" if cents else f"${value:,.0f}"


def pct(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    # Float noise around zero (a Wilson bound of -3e-17) must not print as "-0%".
    return f"{0.0 if abs(value) < 5e-9 else value * 100:,.{digits}f}%"


def number(value: float | int | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def compact(value: float | int | None) -> str:
    """An evidence figure as written by a person: counts with commas, rates and shares with 3 significant digits."""
    if value is None:
        return "–"
    if isinstance(value, int) or float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def tokens(value: float | None) -> str:
    if value is None:
        return "–"
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:,.1f}{unit}"
    return f"{value:,.0f}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(money=money, pct=pct, number=number, compact=compact, tokens=tokens, short_money=charts.money,
                       kind_name=lambda k: KIND_NAMES.get(k, str(k).replace("_", " ")))
    return env


def _template_source() -> str:
    return importlib.resources.files("audit.report").joinpath(TEMPLATE).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- charts (built from the figures, at render time)


def _charts(data: dict[str, Any]) -> dict[str, Markup]:
    out: dict[str, Markup] = {}
    spend = data["spend"]
    items = [(f"{r['template_name']} · {r['model']}", r["spend_monthly_usd"]) for r in spend["by_template_model"]]
    if spend["other_template_models"]:
        items.append((f"{spend['other_template_models']['groups']} others", spend["other_template_models"]["spend_monthly_usd"]))
    out["spend_by_template"] = charts.bar_chart(items, title="Monthly spend by template and model")
    out["spend_by_task"] = charts.bar_chart(
        [(f"{r['task_type']} ({r['tier']} tier)", r["spend_monthly_usd"]) for r in spend["by_task_type"]],
        title="Monthly spend by task type")
    points = spend["over_time"]["points"]
    out["spend_over_time"] = charts.line_chart(
        [p["period"] for p in points],
        [charts.Series(f"spend per {spend['over_time']['bucket']} (full traffic, list price)",
                       [p["spend_usd"] for p in points])],
        title=f"Spend per {spend['over_time']['bucket']}", area=True)
    months = data["projection"]["months"]
    series = [charts.Series("if nothing is done", [m["cost_usd"] for m in months], charts.COLORS[5]),
              charts.Series("after low savings", [m["cost_if_low_savings_usd"] for m in months], charts.COLORS[0], "6 4"),
              charts.Series("after high savings", [m["cost_if_high_savings_usd"] for m in months], charts.COLORS[2], "2 3")]
    if months and months[0]["revenue_usd"] is not None:
        series.append(charts.Series("revenue", [m["revenue_usd"] for m in months], charts.COLORS[7], None, 1.5))
        for share, dash in zip(data["projection"]["revenue_shares"], ("1 4", "5 3")):
            series.append(charts.Series(f"{share:.0%} of revenue", [share * m["revenue_usd"] for m in months],
                                        "#888", dash, 1.0))
    out["projection"] = charts.line_chart([f"M{m['month']}" for m in months], series,
                                          title="Monthly LLM cost over the next twelve months", label_every=1,
                                          log_scale=data["projection"]["log_scale"])
    judged = [r for r in data["trials"]["rows"] if r["pass_rate"] is not None]
    if judged:
        out["trials"] = charts.interval_chart(
            [(f"{r['template_name']} → {r['candidate']}", r["pass_rate"], r["ci_low"], r["ci_high"], r["threshold"])
             for r in judged], title="Pass rate of each candidate (95% interval) against the bar it must clear")
    return out


def render_report(data: dict[str, Any], *, redact: bool = True) -> str:
    """The report as one HTML string: figures from ``build_report``, formatted; logged text redacted unless told not to."""
    shown = redact_report(data) if redact else data
    template = _environment().from_string(_template_source())
    return template.render(d=shown, charts=_charts(shown), redacted=redact, kind_names=KIND_NAMES)


def default_report_path(today: date | None = None) -> Path:
    return REPORTS_DIR / f"audit-report-{(today or date.today()).isoformat()}.html"


def write_report(con: duckdb.DuckDBPyConnection, out: Path | None = None, *, options: Any = None,
                 redact: bool = True, data: dict[str, Any] | None = None) -> Path:
    """Build (unless ``data`` is given) and render the report, write it to ``out`` (default under reports/); return the path."""
    from audit.report import build_report

    path = Path(out) if out is not None else default_report_path()
    if path.exists() and path.is_dir():
        raise ConfigError(f"{path} is a folder", "give --out a file name, e.g. reports/audit.html")
    html = render_report(data if data is not None else build_report(con, options=options), redact=redact)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write next to the target and rename: a reader never sees half a report.
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False,
                                         prefix=f".{path.name}.", suffix=".tmp") as handle:
            handle.write(html)
        # NamedTemporaryFile creates 0600; the report gets the usual permissions of a new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)
        os.replace(handle.name, path)
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {path}: {exc.strerror or exc}",
                          "pass --out with a writable path") from None
    return path


def find_chromium() -> str | None:
    explicit = os.environ.get("AUDIT_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def print_pdf(html_path: Path, pdf_path: Path | None = None) -> Path:
    """The report printed to PDF by headless Chromium (its print stylesheet applies)."""
    browser = find_chromium()
    if browser is None:
        raise ConfigError("--pdf needs Chromium, which is not installed",
                          "install it (Debian/Ubuntu: apt-get install chromium) or set AUDIT_CHROMIUM=/path/to/chrome")
    pdf_path = pdf_path or Path(html_path).with_suffix(".pdf")
    with tempfile.TemporaryDirectory(prefix="audit-pdf-") as profile:
        try:
            done = subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                 f"--user-data-dir={profile}", f"--print-to-pdf={Path(pdf_path).resolve()}",
                 Path(html_path).resolve().as_uri()],
                capture_output=True, text=True, timeout=PDF_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise AuditError(f"Chromium did not print the PDF within {PDF_TIMEOUT_SECONDS} s",
                             "open the HTML report and print it from a browser instead") from None
    if done.returncode != 0 or not Path(pdf_path).exists():
        last = (done.stderr or "").strip().splitlines()
        raise AuditError(f"Chromium could not print the PDF: {last[-1] if last else f'exit {done.returncode}'}",
                         "open the HTML report and print it from a browser instead")
    return Path(pdf_path)


__all__ = ["render_report", "write_report", "redact_report", "print_pdf", "default_report_path", "find_chromium"]
