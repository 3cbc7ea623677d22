"""The core runs without the UI: importing and using it never loads typer or rich."""

from __future__ import annotations

import subprocess
import sys

from conftest import FIXTURES


def test_core_imports_and_ingests_without_typer_or_rich(tmp_path):
    code = f"""
import sys
class Block:
    def find_module(self, name, path=None): return None
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('typer', 'rich', 'click'):
            raise ImportError('UI package imported by the core: ' + name)
sys.meta_path.insert(0, Block())
from audit import db, ingest, spend, tokens, errors, migrations, formats, analyze, pricing, templates, tasks, sample, findings, replay, judge, exports, review, run, report, redact
import audit.report.render, audit.report.charts, audit.report.projection
import audit.judge.checks, audit.judge.decisions, audit.judge.llm_judge, audit.judge.calibrate
con = db.connect({str(tmp_path / 'a.duckdb')!r})
ingest.ingest(con, [{str(FIXTURES / 'openai_chat_pairs.jsonl')!r}])
print(spend.spend_summary(con)['totals']['calls'])
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"
