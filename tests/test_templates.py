"""Prompt-template mining (``audit.templates``): accuracy on the generator's ground truth,
the accuracy measures themselves, and the behaviours the method promises, on real DuckDB files.

The small ledgers below are written straight into ``requests`` (only the
columns mining reads, plus the NOT NULL ones), so each test states exactly the
prompts it is about.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest
from conftest import FIXTURES, REPO, rows

from audit import db as audit_db
from audit import templates as T
from audit.ingest import ingest
from audit.synth import SAMPLE_LOGS_FRACTION

TRUTH = FIXTURES / "sample_logs_truth.csv.gz"


# --------------------------------------------------------------------------- helpers


def add_requests(con, prompts: list[dict]) -> None:
    """Insert requests: each dict has ``messages`` (a list, or None) and optionally id, model, name, version."""
    records = []
    for i, p in enumerate(prompts):
        request_id = p.get("id", f"r{i:05d}")
        messages = None if p["messages"] is None else json.dumps(p["messages"])
        records.append((request_id, request_id, i + 1, p.get("model", "gpt-4o"), p.get("name"), p.get("version"),
                        messages))
    con.executemany(
        """INSERT INTO requests (request_id, native_id, file_id, source_line, source_format, model, prompt_name,
                                 prompt_version, messages, tokens_source, status, is_batch, sampled_fraction)
        VALUES (?, ?, 1, ?, 'test', ?, ?, ?, ?, 'none', 'ok', false, 1.0)""",
        records,
    )


def chat(system: str | None, user: str, *history: str) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": user})
    for i, text in enumerate(history):
        messages.append({"role": "assistant" if i % 2 == 0 else "user", "content": text})
    return messages


def template_of(con) -> dict[str, str]:
    return {r["request_id"]: r["template_id"] for r in rows(con, "SELECT request_id, template_id FROM request_templates")}


def groups(con) -> list[set[str]]:
    """The partition of request ids into templates, as a comparable list of sets."""
    by_template: dict[str, set[str]] = {}
    for request_id, template_id in template_of(con).items():
        by_template.setdefault(template_id, set()).add(request_id)
    return sorted(by_template.values(), key=min)


FAQ_SYSTEM = ("You are the help desk of Example Shop.\nAnswer in two sentences.\n"
              "Never invent order numbers.\nSupport hours: 9 to 5.")
QUESTIONS = ["What are your business hours?", "How do I reset my password?", "Do you ship to Canada?",
             "How do I return an item?", "Can I change my order?"]


# --------------------------------------------------------------------------- accuracy measures


def test_adjusted_rand_index_matches_hand_computed_cases():
    # truth {0,0,0 | 1,1,1}, predicted {0,0 | 1,1 | 2,2}: cells 2,1,1,2 → index 1+1 = 2;
    # rows 3,3 → 3+3 = 6; columns 2,2,2 → 1+1+1 = 3; C(6,2) = 15; expected 6*3/15 = 1.2;
    # max (6+3)/2 = 4.5 → (2 - 1.2) / (4.5 - 1.2) = 0.8 / 3.3.
    cells = T.contingency_from_labels([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2])
    assert T.adjusted_rand_index(cells) == pytest.approx(0.8 / 3.3)
    # sklearn's documented example: [0,0,1,1] vs [0,0,1,2] = 4/7.
    assert T.adjusted_rand_index(T.contingency_from_labels([0, 0, 1, 1], [0, 0, 1, 2])) == pytest.approx(4 / 7)
    # The same partition under other names is perfect; one group against singletons is 0.
    assert T.adjusted_rand_index(T.contingency_from_labels("aabbc", [7, 7, 3, 3, 9])) == 1.0
    assert T.adjusted_rand_index(T.contingency_from_labels([1, 1, 1, 1], [1, 2, 3, 4])) == 0.0


def test_correct_share_needs_the_two_groups_to_identify_each_other():
    # truth a,a,a,b,b,c / predicted 1,1,2,2,2,2: 1 ↔ a (2 of 3 a's), 2 ↔ b; the third a and the c are
    # in group 2, whose majority is b: wrong. 4 of 6 correct.
    cells = T.contingency_from_labels(list("aaabbc"), [1, 1, 2, 2, 2, 2])
    assert T.correct_share(cells) == pytest.approx(4 / 6)
    # Everything merged into one group: only the largest truth template counts.
    assert T.correct_share(T.contingency_from_labels(list("aaab"), [1, 1, 1, 1])) == pytest.approx(3 / 4)
    # A template split in two: only its larger part counts.
    assert T.correct_share(T.contingency_from_labels(list("aaaa"), [1, 1, 1, 2])) == pytest.approx(3 / 4)


# --------------------------------------------------------------------------- the generator's ground truth


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory):
    """sample_logs ingested once; each test gets its own copy of the file."""
    path = tmp_path_factory.mktemp("sample") / "audit.duckdb"
    con = audit_db.connect(path)
    ingest(con, [REPO / "sample_logs"], sampled_fraction=SAMPLE_LOGS_FRACTION)
    con.close()
    return path


@pytest.fixture
def sample_con(sample_db, tmp_path):
    path = tmp_path / "audit.duckdb"
    shutil.copy(sample_db, path)
    con = audit_db.connect(path)
    yield con
    con.close()


def test_sample_logs_templates_match_the_ground_truth(sample_con):
    summary = T.mine_templates(sample_con)
    score = T.score_against_truth(sample_con, TRUTH)
    assert score["requests_without_truth"] == 0 and score["requests_scored"] == summary["requests"] == 4041
    assert score["ari"] >= 0.95
    assert score["correct_share"] >= 0.95
    # Five templates carry explicit names in the logs; the other three are mined.
    assert (summary["explicit"], summary["mined"]) == (5, 3)
    names = {r["name"] for r in rows(sample_con, "SELECT name FROM templates WHERE source = 'explicit'")}
    assert names == {"support-faq-bot", "catalog-card-summary", "refund-eligibility", "order-issue-extractor",
                     "agent-reply-draft"}


def test_sample_logs_without_prompt_names_mining_alone_matches_the_ground_truth(sample_con):
    sample_con.execute("UPDATE requests SET prompt_name = NULL, prompt_version = NULL")
    summary = T.mine_templates(sample_con)
    score = T.score_against_truth(sample_con, TRUTH)
    assert summary["explicit"] == 0
    assert score["ari"] >= 0.95 and score["correct_share"] >= 0.95


def test_unnamed_requests_join_the_named_template_of_their_skeleton(sample_con):
    T.mine_templates(sample_con)
    # 45% of FAQ calls carry the name: all FAQ calls, named or not, land in 'support-faq-bot'.
    counts = rows(sample_con, """
        SELECT count(*) FILTER (WHERE r.prompt_name IS NULL) AS unnamed, count(*) AS calls
        FROM request_templates rt JOIN templates t USING (template_id) JOIN requests r USING (request_id)
        WHERE t.name = 'support-faq-bot'""")[0]
    assert counts["calls"] == 1532 and 0 < counts["unnamed"] < counts["calls"]


def test_rerun_rewrites_the_same_rows_and_ids(sample_con):
    T.mine_templates(sample_con)
    first_templates = rows(sample_con, "SELECT * FROM templates ORDER BY template_id")
    first_requests = rows(sample_con, "SELECT request_id, template_id, slots::VARCHAR AS slots FROM request_templates "
                                      "ORDER BY request_id")
    T.mine_templates(sample_con)
    assert rows(sample_con, "SELECT * FROM templates ORDER BY template_id") == first_templates
    assert rows(sample_con, "SELECT request_id, template_id, slots::VARCHAR AS slots FROM request_templates "
                            "ORDER BY request_id") == first_requests


def test_every_request_has_exactly_one_template_and_templates_are_complete(sample_con):
    T.mine_templates(sample_con)
    assert rows(sample_con, """
        SELECT count(*) AS n, count(DISTINCT request_id) AS distinct_ids,
               count(*) FILTER (WHERE template_id NOT IN (SELECT template_id FROM templates)) AS orphans
        FROM request_templates""") == [{"n": 4041, "distinct_ids": 4041, "orphans": 0}]
    for t in rows(sample_con, "SELECT * FROM templates"):
        assert t["signature"] and t["name"] and len(t["template_id"]) == 16
        # The example is one of the template's own requests; roll-up and task columns are left to others.
        assert rows(sample_con, "SELECT template_id FROM request_templates WHERE request_id = ?",
                    [t["example_request_id"]]) == [{"template_id": t["template_id"]}]
        assert t["calls"] is None and t["spend_usd"] is None and t["task_type"] is None


def test_signatures_show_instructions_and_mask_the_variable_parts(sample_con):
    sample_con.execute("UPDATE requests SET prompt_name = NULL, prompt_version = NULL")
    T.mine_templates(sample_con)
    signatures = {r["name"]: r["signature"] for r in rows(sample_con, "SELECT name, signature FROM templates")}
    product = signatures["You write concise, accurate product summaries…"]
    assert product.endswith(
        "[user]\nSummarize this product description for the catalog card in 2-3 sentences (at most 60 words). "
        "Mention the material, the two most distinctive features, the colors and the price.\n"
        "Product ID: {text}\nProduct name: {text}\nCategory: {text}\nDescription:\n{text}")
    ticket = signatures["You are the ticket triage classifier for Acme…"]
    assert ticket.endswith("[user]\nTicket {id}\nChannel: {text}\nSubject: {text}\n{text}")
    # The chat: the system prompt's customer block is masked, the whole user turn is a slot.
    chat_signature = signatures["You are Ava, Acme's customer support assistant…"]
    assert "Name: {text}\nEmail: {text}" in chat_signature and chat_signature.endswith("[user]\n{text}")
    assert "Daniel" not in chat_signature
    # The slots of a product summary: the three fields, then the description.
    slots = json.loads(rows(sample_con, """
        SELECT slots::VARCHAR AS s FROM request_templates rt JOIN requests r USING (request_id)
        WHERE r.messages->>'$[1].content' LIKE '%Product ID: P-10023%' LIMIT 1""")[0]["s"])
    assert slots[:3] == ["P-10023", "Acme Willow Turkish Cotton Towel Set", "Home"]
    assert slots[3].startswith("The Acme Willow Turkish Cotton Towel Set is") and len(slots) == 4


# --------------------------------------------------------------------------- behaviours on small ledgers


def test_masked_values_become_slots_in_order(con):
    system = "You triage support tickets.\nAnswer with one label."
    add_requests(con, [
        {"messages": chat(system, f"Ticket T-{100000 + i}\nFrom: {name}@example.com\nReceived 2025-06-0{i + 1} "
                                  f"for $1{i}.50\n\n{body}")}
        for i, (name, body) in enumerate([("ann", "My parcel is late."), ("bob", "I was charged twice."),
                                          ("cy", "The app crashes on login.")])
    ])
    summary = T.mine_templates(con)
    assert summary["templates"] == 1
    signature = rows(con, "SELECT signature FROM templates")[0]["signature"]
    assert signature == ("[system]\nYou triage support tickets.\nAnswer with one label.\n"
                         "[user]\nTicket {id}\nFrom: {text}\nReceived {date} for {amount}\n{text}")
    slots = json.loads(rows(con, "SELECT slots::VARCHAR AS s FROM request_templates WHERE request_id = 'r00001'")[0]["s"])
    assert slots == ["T-100001", "bob@example.com", "2025-06-02", "$11.50", "I was charged twice."]


def test_requests_without_prompt_text_get_one_template_per_model(con):
    add_requests(con, [{"messages": None, "model": "gpt-4o"}, {"messages": None, "model": "gpt-4o"},
                       {"messages": None, "model": "gpt-4o-mini"},
                       {"messages": chat(FAQ_SYSTEM, "What are your business hours?")}])
    summary = T.mine_templates(con)
    assert summary["no_prompt_requests"] == 3 and summary["no_prompt_templates"] == 2
    assert "3 of 4 requests logged no prompt text" in summary["note"]
    found = rows(con, """SELECT t.name, t.source, t.signature, count(*) AS n, max(rt.slots) AS slots
                         FROM templates t JOIN request_templates rt USING (template_id)
                         WHERE t.name LIKE '(no prompt%' GROUP BY ALL ORDER BY t.name""")
    assert found == [
        {"name": "(no prompt logged: gpt-4o)", "source": "mined", "signature": "(no prompt logged)", "n": 2,
         "slots": None},
        {"name": "(no prompt logged: gpt-4o-mini)", "source": "mined", "signature": "(no prompt logged)", "n": 1,
         "slots": None},
    ]


def test_chat_turns_belong_to_their_conversation_template(con):
    """A multi-turn call's template is its system prompt + first user message, whatever the history."""
    system = "You are the chat assistant of Example Shop.\nBe brief.\nNever promise delivery dates."
    prompts = []
    for session in range(30):
        opener = f"Hi, where is my order {1000 + session}?"
        history = []
        for turn in range(1 + session % 5):
            prompts.append({"messages": chat(system, opener, *history), "id": f"s{session}-t{turn}"})
            history += [f"Let me check order {1000 + session}.", random.Random(turn).choice(["ok", "thanks", "and?"])]
    prompts += [{"messages": chat(FAQ_SYSTEM, q), "id": f"faq{i}"} for i, q in enumerate(QUESTIONS * 4)]
    add_requests(con, prompts)
    T.mine_templates(con)
    partition = groups(con)
    assert len(partition) == 2
    assert {p["id"] for p in prompts if p["id"].startswith("s")} in partition


def test_faq_questions_are_slots_not_templates_even_when_frequent(con):
    # One question is 60% of the traffic: it is still the variable part of one template.
    questions = [QUESTIONS[0]] * 60 + [q for q in QUESTIONS[1:] for _ in range(10)]
    add_requests(con, [{"messages": chat(FAQ_SYSTEM, q)} for q in questions])
    summary = T.mine_templates(con)
    assert summary["templates"] == 1
    assert rows(con, "SELECT signature FROM templates")[0]["signature"].endswith("[user]\n{text}")


def test_instructions_behind_a_generic_system_prompt_are_told_apart(con):
    generic = "You are a helpful assistant."
    rng = random.Random(3)
    texts = [" ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega"]) for _ in range(8)) for _ in range(100)]
    prompts = [{"messages": chat(generic, f"Translate the text below into French.\n\n{t}")} for t in texts[:60]]
    prompts += [{"messages": chat(generic, f"Summarize the text below in one sentence.\n\n{t}")} for t in texts[60:]]
    # Without any system prompt, the instruction line alone identifies the template.
    prompts += [{"messages": chat(None, f"Fix the grammar of this paragraph:\n{t}")} for t in texts[:20]]
    add_requests(con, prompts)
    T.mine_templates(con)
    signatures = sorted(r["signature"] for r in rows(con, "SELECT signature FROM templates"))
    assert signatures == [
        "[system]\nYou are a helpful assistant.\n[user]\nSummarize the text below in one sentence.\n{text}",
        "[system]\nYou are a helpful assistant.\n[user]\nTranslate the text below into French.\n{text}",
        "[user]\nFix the grammar of this paragraph:\n{text}",
    ]


def test_a_greeting_after_the_instruction_does_not_split_a_template(con):
    system = "You extract order data from customer emails.\nReturn JSON."
    greetings = ["Hi,", "Hello,", "Dear team,", "Hey there,"]
    rng = random.Random(5)
    add_requests(con, [
        {"messages": chat(system, f"Email subject: Order {i}\n\n{greetings[i % 4]}\n\nI ordered {rng.randint(1, 9)} "
                                  f"mugs and {rng.choice(['one broke', 'none came', 'the lid is missing'])}.")}
        for i in range(80)
    ])
    T.mine_templates(con)
    assert len(groups(con)) == 1
    assert rows(con, "SELECT signature FROM templates")[0]["signature"].endswith(
        "[user]\nEmail subject: {text}\n{text}")


def test_versions_of_a_system_prompt_are_one_template_without_names(con):
    v1 = FAQ_SYSTEM
    v2 = FAQ_SYSTEM.replace("Never invent order numbers.", "Never invent order numbers.\nDo not upsell.")
    other = "You write product descriptions.\nUse at most 50 words.\nNo emojis.\nNo superlatives."
    add_requests(con, [{"messages": chat(v1, q)} for q in QUESTIONS * 3]
                 + [{"messages": chat(v2, q)} for q in QUESTIONS * 5]
                 + [{"messages": chat(other, f"Describe product {i}.")} for i in range(10)])
    summary = T.mine_templates(con)
    assert summary["templates"] == 2
    # The signature is the main version's (the newer, larger one).
    assert any("Do not upsell." in r["signature"] for r in rows(con, "SELECT signature FROM templates"))


def test_explicit_name_wins_and_versions_share_one_template(con):
    add_requests(con, [
        {"messages": chat(FAQ_SYSTEM, q), "name": "faq-bot", "version": str(1 + i % 2)}
        for i, q in enumerate(QUESTIONS)
    ] + [{"messages": chat(FAQ_SYSTEM, q)} for q in QUESTIONS]
      # A named request whose text is unlike the others still belongs to its name.
      + [{"messages": chat("Something else entirely.", "hello"), "name": "faq-bot", "version": "3"}])
    summary = T.mine_templates(con)
    assert (summary["templates"], summary["explicit"], summary["mined"]) == (1, 1, 0)
    template = rows(con, "SELECT template_id, source, name FROM templates")[0]
    assert template["name"] == "faq-bot" and template["source"] == "explicit"
    assert template["template_id"] == T._short_hash("explicit:faq-bot")
