"""Benchmark: `audit replay` on vLLM against bare `LLM.chat` and one-request-at-a-time, same engine.

The sample_logs ledger is ingested, analyzed and sampled into a scratch
database; the first K sampled requests of each template (``--per-template``,
default 4) are the prompts. All three passes use one vLLM engine (the packaged
SmolLM2 on this machine's CPU, or ``--model``) and identical prompts and
sampling parameters (greedy, answers capped at ``--max-tokens``):

  (a) ours        ``audit.replay.replay``, timed from outside: context fitting, storing each
                  answer in DuckDB as it finishes, the run's bookkeeping;
  (b) bare        one ``LLM.chat`` call with every conversation: the engine's own batched throughput;
  (c) sequential  ``LLM.chat`` once per conversation, as a naive loop would.

Tokens/s = (prompt + output tokens) / wall time. Prints each pass and the
ratios ours/bare (target >= 0.9: the bookkeeping costs almost nothing) and
ours/sequential (what batching buys).

    .venv/bin/python bench/replay.py [--per-template 4] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-template", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", default="smollm2", help="a vLLM model folder (default: the packaged SmolLM2)")
    args = parser.parse_args()

    from audit import db
    from audit.analyze import analyze
    from audit.backends import Candidate, parse_candidate
    from audit.backends.vllm_engine import VllmEngine
    from audit.ingest import ingest
    from audit.pricing import PriceBook
    from audit.replay import plan_replay, replay
    from audit.sample import draw_sample
    from audit.synth import SAMPLE_LOGS_FRACTION

    scratch = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    try:
        con = db.connect(scratch / "bench.duckdb")
        ingest(con, [REPO / "sample_logs"], sampled_fraction=SAMPLE_LOGS_FRACTION)
        analyze(con)
        draw_sample(con, n=500, seed=7)

        spec = f"bench=vllm:{args.model}?max_tokens={args.max_tokens}&temperature=0"
        candidate = parse_candidate(spec)
        started = time.perf_counter()
        engine = VllmEngine(Candidate(candidate.name, "vllm", candidate.model, {"max_model_len": "8192"}))
        startup = time.perf_counter() - started
        print(f"engine: {engine.info.version} on {engine.info.device}, model {args.model}, started in {startup:.1f} s", flush=True)

        class Shared:
            info = engine.info
            prepare = staticmethod(engine.prepare)
            run = staticmethod(engine.run)

            def close(self) -> None:
                pass

        plan = plan_replay(con, [candidate], book=PriceBook(), per_template=args.per_template)
        items = [engine.prepare(item) for item in plan.candidates[0].items]
        items = [item for item in items if not hasattr(item, "error_kind")]
        conversations = [item.messages for item in items]
        params = [engine.sampling_params(item) for item in items]
        print(f"prompts: {len(items)} sampled conversations, answers up to {args.max_tokens} tokens, greedy", flush=True)

        # Warm-up: first calls allocate buffers; not measured.
        engine.llm.chat(conversations[:2], params[:2], use_tqdm=False)

        def tokens_of(outputs) -> int:
            return sum(len(o.prompt_token_ids) + len(o.outputs[0].token_ids) for o in outputs)

        # vLLM caches prompt prefixes across calls: each pass starts with an empty cache,
        # or the later passes would skip the prefill work the first one did.
        engine.llm.reset_prefix_cache()
        t = time.perf_counter()
        bare_outputs = engine.llm.chat(conversations, params, use_tqdm=False)
        bare_seconds = time.perf_counter() - t
        bare_tokens = tokens_of(bare_outputs)

        # Timed from outside: context fitting, storing each answer and the run's bookkeeping all count.
        engine.llm.reset_prefix_cache()
        t = time.perf_counter()
        summary = replay(con, plan, engine_factory=lambda c: Shared())
        ours_seconds = time.perf_counter() - t
        run = summary["candidates"][0]["run"]
        ours_tokens = run["prompt_tokens"] + run["output_tokens"]

        engine.llm.reset_prefix_cache()
        t = time.perf_counter()
        sequential_outputs = []
        for conversation, param in zip(conversations, params):
            sequential_outputs.extend(engine.llm.chat([conversation], [param], use_tqdm=False))
        sequential_seconds = time.perf_counter() - t
        sequential_tokens = tokens_of(sequential_outputs)

        rates = {
            "ours (audit replay)": (ours_tokens, ours_seconds),
            "bare LLM.chat batch": (bare_tokens, bare_seconds),
            "one at a time": (sequential_tokens, sequential_seconds),
        }
        print(f"{'pass':24} {'tokens':>9} {'seconds':>9} {'tokens/s':>9}")
        for name, (tokens, seconds) in rates.items():
            print(f"{name:24} {tokens:>9,} {seconds:>9.1f} {tokens / seconds:>9,.0f}")
        ours = ours_tokens / ours_seconds
        bare = bare_tokens / bare_seconds
        sequential = sequential_tokens / sequential_seconds
        print(f"ours / bare       = {ours / bare:.2f}  (target >= 0.90: {'met' if ours / bare >= 0.9 else 'NOT met'})")
        print(f"ours / sequential = {ours / sequential:.2f}  (what batching buys on this device)")
        engine.close()
        con.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
