"""Task type and tier per template (``audit.tasks``).

Template mining is not this module's job, so the tests build the grouping
themselves: on the sample logs, from the generator's ground truth (one
template per truth ``template_id``, joined on ``requests.native_id``); for
the task types the generator does not emit, from small hand-written
templates whose prompts use ordinary wording for the task, not the
generator's phrases.
"""

from __future__ import annotations

import csv
import gzip
import json
import statistics

import pytest
from conftest import FIXTURES, REPO, rows

from audit import db as audit_db
from audit import tasks
from audit.ingest import ingest
from audit.synth import SAMPLE_LOGS_FRACTION

# The ground truth's task types and tiers, written out here (not taken from
# audit.tasks) so that a wrong tier table fails.
TRUTH_TIERS = {
    "faq_lookup": "small", "chat": "large", "summarization": "mid", "classification": "small",
    "structured_extraction": "small", "email_drafting": "mid", "code_generation": "mid",
    "complex_reasoning": "large",
}


def _load_truth_templates(con) -> None:
    """templates + request_templates from the ground truth: one template per truth template_id."""
    with gzip.open(FIXTURES / "sample_logs_truth.csv.gz", "rt", newline="") as handle:
        truth = list(csv.DictReader(handle))
    con.execute("CREATE TEMP TABLE truth (native_id VARCHAR, template_id VARCHAR, task_type VARCHAR, tier VARCHAR)")
    con.execute(
        "INSERT INTO truth SELECT unnest($1), unnest($2), unnest($3), unnest($4)",
        [[t["native_id"] for t in truth], [t["template_id"] for t in truth],
         [t["task_type"] for t in truth], [t["tier"] for t in truth]],
    )
    con.execute("DELETE FROM request_templates; DELETE FROM templates")
    con.execute("INSERT INTO request_templates SELECT r.request_id, t.template_id, NULL "
                "FROM truth t JOIN requests r USING (native_id)")
    con.execute("INSERT INTO templates (template_id, source, name, signature) "
                "SELECT DISTINCT template_id, 'mined', template_id, template_id FROM truth")


@pytest.fixture(scope="module")
def sample_con(tmp_path_factory):
    con = audit_db.connect(tmp_path_factory.mktemp("tasks") / "audit.duckdb")
    ingest(con, [REPO / "sample_logs"], sampled_fraction=SAMPLE_LOGS_FRACTION)
    _load_truth_templates(con)
    yield con
    con.close()


def _classified(con) -> dict[str, dict]:
    return {r["template_id"]: r for r in rows(
        con, """SELECT t.template_id, t.task_type, t.task_confidence, t.tier, t.task_evidence,
                       (SELECT any_value(task_type) FROM truth WHERE template_id = t.template_id) AS truth_type,
                       (SELECT any_value(tier) FROM truth WHERE template_id = t.template_id) AS truth_tier
                FROM templates t ORDER BY t.template_id""")}


def test_every_sample_template_gets_the_ground_truth_task_type_and_tier(sample_con):
    summary = tasks.classify_templates(sample_con)
    got = _classified(sample_con)
    assert len(got) == 8
    # The truth file's own tiers agree with DESIGN.md's table as written above.
    assert {g["truth_type"]: g["truth_tier"] for g in got.values()} == TRUTH_TIERS
    right = [t for t, g in got.items() if g["task_type"] == g["truth_type"]]
    accuracy = len(right) / len(got)
    print(f"\ntask-type accuracy on the sample logs: {len(right)}/{len(got)} = {accuracy:.0%}")
    for template_id, g in got.items():
        print(f"  {template_id:18s} {g['task_type']:22s} conf {g['task_confidence']:.2f} tier {g['tier']}")
    assert accuracy == 1.0, {t: (g["task_type"], g["truth_type"]) for t, g in got.items()}
    assert all(g["tier"] == g["truth_tier"] for g in got.values())
    assert summary["by_task_type"] == {t: 1 for t in TRUTH_TIERS}
    assert summary["by_tier"] == {"large": 2, "mid": 3, "small": 3}


def test_evidence_names_the_features_and_rules_that_decided(sample_con):
    tasks.classify_templates(sample_con)
    got = _classified(sample_con)
    for g in got.values():
        evidence = json.loads(g["task_evidence"])
        assert 0.5 <= g["task_confidence"] <= 1.0
        assert evidence["rules"], g
        assert evidence["scores"][g["task_type"]] == max(evidence["scores"].values())
        assert sum(r["points"] for r in evidence["rules"]) == evidence["scores"][g["task_type"]]
    tickets = json.loads(got["ticket_classify"]["task_evidence"])
    assert tickets["distinct_outputs"] == 8          # the eight ticket categories
    assert tickets["label_like_outputs"] > 0.95 and tickets["median_output_tokens"] <= 3
    assert {"classifier", "category"} <= set(tickets["prompt_words"])
    orders = json.loads(got["order_extract"]["task_evidence"])
    assert orders["output_is_json"] > 0.95 and "extract" in orders["prompt_keywords"]
    chat = json.loads(got["support_chat"]["task_evidence"])
    assert chat["resends_history"] > 0.5 and chat["turns_max"] > chat["turns_min"] and chat["turns_median"] >= 3
    faq = json.loads(got["faq_answer"]["task_evidence"])
    assert faq["question_form"] > 0.8 and faq["repeated_user_text"] > 0.3
    code = json.loads(got["code_snippet"]["task_evidence"])
    assert code["code_fenced"] > 0.9


def test_rerun_gives_the_same_rows(sample_con):
    tasks.classify_templates(sample_con)
    first = rows(sample_con, "SELECT * FROM templates ORDER BY template_id")
    tasks.classify_templates(sample_con)
    assert rows(sample_con, "SELECT * FROM templates ORDER BY template_id") == first


def test_sample_reads_a_few_vectors_and_spreads_each_template_over_several(sample_con, monkeypatch):
    """With 64-row vectors the 4,041-row ledger has 64 of them: the sample must not read them all,
    must cap each template near its target, and still classify every template right."""
    monkeypatch.setattr(tasks, "VECTOR_ROWS", 64)
    monkeypatch.setattr(tasks, "SAMPLE_PER_TEMPLATE", 40)
    monkeypatch.setattr(tasks, "MIN_SAMPLE_PER_TEMPLATE", 10)
    vectors_total = rows(sample_con, "SELECT count(DISTINCT rowid // 64) AS n FROM requests")[0]["n"]
    ranges, vectors_read = tasks._choose_sample(sample_con)
    tasks._read_sample(sample_con, ranges)
    per_template = rows(
        sample_con,
        """SELECT s.template_id, count(*) AS sampled, count(DISTINCT s.row_number_in_table // 64) AS vectors,
                  (SELECT count(DISTINCT vec) FROM _task_vectors v WHERE v.template_id = s.template_id) AS holding
           FROM _task_sample_rows s GROUP BY ALL""")
    assert vectors_read < vectors_total / 2
    assert len(per_template) == 8
    for t in per_template:
        assert 10 <= t["sampled"] <= 40 + 10, t        # target + at most one vector's cap
        assert t["vectors"] >= min(4, t["holding"]), t
    # the rows read are exactly the rows picked, with their text
    assert rows(sample_con, "SELECT count(*) AS n FROM _task_sample WHERE messages IS NOT NULL")[0]["n"] == sum(
        t["sampled"] for t in per_template)
    summary = tasks.classify_templates(sample_con)
    assert summary["vectors_read"] == vectors_read
    got = _classified(sample_con)
    assert all(g["task_type"] == g["truth_type"] for g in got.values()), got


# --------------------------------------------------------------------------- hand-made templates


def _add_template(con, template_id: str, calls: list[tuple[list[dict] | None, str | None]], *,
                  temperature: float | None = None) -> None:
    """Store ``calls`` (messages, response) as requests of one template."""
    start = rows(con, "SELECT count(*) AS n FROM requests")[0]["n"]
    values = []
    for i, (messages, response) in enumerate(calls):
        prompt_words = sum(len(str(m["content"]).split()) for m in messages) if messages else 50
        values.append((f"{template_id}-{i}", start + i + 1, json.dumps(messages) if messages else None, response,
                       int(prompt_words * 1.3) + 8, int(len(response.split()) * 1.3) + 1 if response else 12,
                       temperature))
    con.execute(
        """INSERT INTO requests (request_id, native_id, file_id, source_line, source_format, started_at, provider,
                                 model_logged, model, messages, response_text, input_tokens, output_tokens,
                                 tokens_source, status, is_batch, temperature, sampled_fraction)
           SELECT id, id, 1, line, 'test', TIMESTAMP '2025-06-01 12:00:00' + to_seconds(line), 'openai',
                  'gpt-4o', 'gpt-4o', msgs::JSON, resp, inp, outp, 'logged', 'ok', false, temp, 1.0
           FROM (SELECT unnest($1) AS id, unnest($2) AS line, unnest($3) AS msgs, unnest($4) AS resp,
                        unnest($5) AS inp, unnest($6) AS outp, unnest($7) AS temp)""",
        [list(c) for c in zip(*values, strict=True)],
    )
    con.execute("INSERT INTO request_templates SELECT request_id, ?, NULL FROM requests WHERE request_id LIKE ?",
                [template_id, f"{template_id}-%"])
    con.execute("INSERT INTO templates (template_id, source, name, signature) VALUES (?, 'mined', ?, ?)",
                [template_id, template_id, template_id])


def _chat(system: str, user: str, *, parts: bool = False) -> list[dict]:
    content = [{"type": "text", "text": user}] if parts else user
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


SLOT_SYSTEM = ("You parse restaurant booking requests for our reservations API. Extract the slots date, time, "
               "party_size and location from the guest's message and return them as a JSON object with exactly "
               "those keys; use null for a slot the message does not give.")
SLOT_CALLS = [
    ("table for 4 tomorrow at 7pm in Boston",
     '{"date": "tomorrow", "time": "19:00", "party_size": 4, "location": "Boston"}'),
    ("can I book for two on Friday evening",
     '{"date": "Friday", "time": "evening", "party_size": 2, "location": null}'),
    ("need a table for 6, Saturday 8:30, downtown",
     '{"date": "Saturday", "time": "20:30", "party_size": 6, "location": "downtown"}'),
    ("3 people next Tuesday lunch, Cambridge branch",
     '{"date": "next Tuesday", "time": "lunch", "party_size": 3, "location": "Cambridge"}'),
    ("reserve for 2 tonight 9pm",
     '{"date": "today", "time": "21:00", "party_size": 2, "location": null}'),
    ("party of eight on June 14 at noon in Somerville",
     '{"date": "June 14", "time": "12:00", "party_size": 8, "location": "Somerville"}'),
]

REPORT_SYSTEM = ("You are an analyst who writes executive summaries. Summarize the document the user provides in "
                 "five bullet points for a busy executive: results, risks, outlook. Do not add facts that are not "
                 "in the document.")


def _annual_report(company: str, seed: int) -> str:
    regions = ["North America", "Europe", "Asia Pacific", "Latin America", "the Middle East"]
    lines = [f"{company} Annual Report {2019 + seed}", ""]
    for section in range(12):
        lines.append(f"Section {section + 1}: Operations review, part {section + 1}")
        for k, region in enumerate(regions):
            growth = (seed * 7 + section * 3 + k * 5) % 23 - 6
            lines.append(
                f"In {region}, net revenue for the segment moved by {growth}% against the prior year, driven by "
                f"volume in product line {chr(65 + (section + k) % 26)} and by pricing actions taken in quarter "
                f"{1 + (section + k) % 4}; operating margin ended at {12 + (seed + section + k) % 9}.{k} percent, "
                f"and headcount in the region changed by {(section * k + seed) % 40 - 10} people.")
        lines.append("")
    return "\n".join(lines)


def _report_summary(company: str, seed: int) -> str:
    return (f"- {company} grew net revenue in most regions in {2019 + seed}, led by North America and Asia Pacific.\n"
            f"- Operating margins ranged from 12 to 20 percent; Latin America was the weakest segment.\n"
            f"- Pricing actions in the second half offset softer volume in Europe.\n"
            f"- Headcount was broadly flat, with hiring in Asia Pacific and reductions in Europe.\n"
            f"- Risks: currency swings and concentration in product line {chr(65 + seed)}; "
            f"outlook cautiously positive.")


STORY_SYSTEM = ("You are a creative writing partner. Write an original short story for the prompt: vivid imagery, "
                "a clear narrative arc, characters with distinct voices, and an ending that surprises.")
STORY_PROMPTS = ["a lighthouse keeper who finds a message in a bottle",
                 "a robot learning to bake bread in a small village",
                 "two rival chess players stranded at an airport",
                 "a girl who can hear the thoughts of trees",
                 "the last taxi driver in a city of self-driving cars"]
RESEARCH_SYSTEM = ("You are a research assistant. Write an in-depth research brief on the topic: survey the "
                   "literature, compare the main positions, and list your sources as references at the end.")
RESEARCH_TOPICS = ["the effect of remote work on productivity", "microplastics in drinking water",
                   "four-day work weeks", "urban heat islands and tree cover"]


def _long_prose(subject: str, seed: int, paragraphs: int = 6) -> str:
    openings = ["At first", "By the evening", "Much later", "Without warning", "In the quiet that followed",
                "Some weeks on"]
    body = []
    for p in range(paragraphs):
        body.append(
            f"{openings[(p + seed) % len(openings)]}, the story of {subject} turned again: the air smelled of "
            f"salt and iron, the light fell in long copper bands across the floor, and every small decision "
            f"seemed to carry the weight of {p + seed + 2} earlier ones. Nobody said it aloud, but each of them "
            f"knew that the ordinary shape of their days had already changed, and that there was no road back "
            f"to the person they had been on the morning it began.")
    return "\n\n".join(body)


def _research_brief(topic: str, seed: int) -> str:
    return (_long_prose(topic, seed, paragraphs=5).replace("the story of", "the research on")
            + "\n\nReferences:\n1. Smith, J. (2021). Journal of Applied Studies.\n"
              "2. Chen, L. and Okafor, B. (2023). Review of Evidence.\n3. National Statistics Office (2024).")


TRANSLATE_SYSTEM = "You are a helpful assistant."
TRANSLATE_CALLS = [("Translate into German: The meeting moved to Thursday afternoon.",
                    "Das Treffen wurde auf Donnerstagnachmittag verschoben."),
                   ("Translate into German: Please bring the signed contract with you.",
                    "Bitte bringen Sie den unterschriebenen Vertrag mit."),
                   ("Translate into German: The train leaves from platform seven at noon.",
                    "Der Zug fährt um zwölf Uhr von Gleis sieben ab."),
                   ("Translate into German: Our office will be closed during the holidays.",
                    "Unser Büro bleibt über die Feiertage geschlossen.")]


@pytest.fixture
def handmade_con(con):
    _add_template(con, "booking_slots", [(_chat(SLOT_SYSTEM, u, parts=True), r) for u, r in SLOT_CALLS])
    _add_template(con, "report_digest", [
        (_chat(REPORT_SYSTEM, "Summarize the following report.\n\n" + _annual_report(name, i)),
         _report_summary(name, i))
        for i, name in enumerate(["Northwind", "Contoso", "Fabrikam", "Tailspin", "Litware"])])
    _add_template(con, "short_stories", [
        (_chat(STORY_SYSTEM, f"Write a story about {p}."), _long_prose(p, i)) for i, p in enumerate(STORY_PROMPTS)],
        temperature=1.0)
    _add_template(con, "research_briefs", [
        (_chat(RESEARCH_SYSTEM, f"Topic: {t}"), _research_brief(t, i)) for i, t in enumerate(RESEARCH_TOPICS)],
        temperature=0.9)
    _add_template(con, "usage_only", [(None, None)] * 5)
    _add_template(con, "translate", [(_chat(TRANSLATE_SYSTEM, u), r) for u, r in TRANSLATE_CALLS])
    con.execute("INSERT INTO templates (template_id, source, name, signature) "
                "VALUES ('no_calls', 'explicit', 'no_calls', 'no_calls')")
    return con


def test_handmade_templates_of_the_other_task_types(handmade_con):
    summary = tasks.classify_templates(handmade_con)
    got = {r["template_id"]: r for r in rows(handmade_con, "SELECT * FROM templates")}
    expected = {
        "booking_slots": ("slot_extraction", "small"),
        "report_digest": ("long_document_summarization", "mid"),
        "short_stories": ("creative_writing", "large"),
        "research_briefs": ("creative_writing", "large"),
    }
    assert {t: (got[t]["task_type"], got[t]["tier"]) for t in expected} == expected, {
        t: json.loads(got[t]["task_evidence"])["scores"] for t in expected}
    for t in expected:
        assert got[t]["task_confidence"] >= 0.6, (t, got[t]["task_evidence"])
    slots = json.loads(got["booking_slots"]["task_evidence"])
    assert slots["output_is_json"] == 1.0 and "slots" in slots["prompt_keywords"]
    # the user text is read out of the content parts, not their JSON
    assert slots["user_words_median"] == statistics.median(len(u.split()) for u, _ in SLOT_CALLS)
    report = json.loads(got["report_digest"]["task_evidence"])
    assert report["user_text_tokens_median"] >= tasks.LONG_DOCUMENT_TOKENS
    assert summary["by_tier"]["large"] == 2


# Other wordings and shapes of the same task types: the rules must key on
# what any such prompt shows, not on one product's phrases.
_REVIEWS = [("Great blender, works perfectly", "positive"), ("Broke after two days", "negative"),
            ("It is okay I guess", "neutral"), ("Love it!", "positive"), ("Terrible support", "negative"),
            ("Arrived on time, does the job", "positive"), ("Not worth the money", "negative"),
            ("Five stars", "positive"), ("meh", "neutral"), ("Would buy again", "positive"),
            ("Awful smell", "negative"), ("fine", "neutral")]
_INTENTS = ["check_balance", "transfer", "card_lost", "check_balance", "open_account", "transfer", "card_lost",
            "close_account", "check_balance", "transfer", "open_account", "card_lost"]
_STORE_QUESTIONS = ["What is your return policy?", "do you ship to canada?", "What is your return policy?",
                    "how do i reset my password", "Do you ship to Canada?", "what payment methods do you accept?",
                    "What is your return policy", "How do I reset my password?"]


def _transcript(i: int) -> str:
    return "\n".join(f"Speaker {k % 4}: On item {k} we discussed budget line {k * i % 17} and agreed to revisit the "
                     f"vendor contract next quarter, with owners assigned and a follow-up date set for the review."
                     for k in range(110))


def _invoice(i: int) -> str:
    items = "\n".join(f"Line {k}: widget type {k} x {k + i} at $ {3 * k}.00 each" for k in range(1, 12))
    return (f"INVOICE\nAcme Supplies Ltd, 12 Market Street, Springfield\nInvoice no. INV-{1000 + i}\n"
            f"Date: 2025-05-{10 + i}\nBill to: Contoso Retail, 99 High Road, Shelbyville\n{items}\n"
            f"Subtotal: $ {400 + i}.00\nTax: $ {40 + i}.00\nTotal due: $ {440 + 2 * i}.00\n"
            f"Payment terms: 30 days net. Thank you for your business.")


VARIANTS = {
    "sentiment": ("classification", [
        (_chat("Determine the sentiment of the product review. Respond with positive, negative or neutral.", r), lab)
        for r, lab in _REVIEWS]),
    "intent": ("classification", [
        (_chat("Identify the customer's intent. Possible intents: check_balance, transfer, card_lost, open_account, "
               "close_account. Output just the intent.", f"message {i}: I need help with my {x.replace('_', ' ')}"), x)
        for i, x in enumerate(_INTENTS)]),
    "store_questions": ("faq_lookup", [
        (_chat("You answer shoppers' questions about our store's policies. Keep answers to two sentences.", q),
         f"Our answer about {q.lower().rstrip('?')} is simple: see the help page, and contact us for more.")
        for q in _STORE_QUESTIONS]),
    "text_to_sql": ("code_generation", [
        (_chat("Translate the analyst's request into a SQL query for our Postgres warehouse (tables orders, "
               "customers, products). Return only the query.", q),
         f"SELECT c.name, sum(o.total) AS revenue\nFROM orders o JOIN customers c USING (customer_id)\n"
         f"GROUP BY c.name -- {q}\nORDER BY revenue DESC;")
        for q in ["total sales per month in 2024", "top 5 customers by revenue", "orders without a shipment",
                  "average basket size per country", "products never ordered"]]),
    "meeting_tldr": ("long_document_summarization", [
        (_chat("Give a TL;DR of the meeting transcript: decisions, owners, deadlines.", _transcript(i)),
         "Decisions: revisit vendor contracts next quarter. Owners: speakers 0-3 for their budget lines. "
         "Deadline: follow-up review at the next meeting.") for i in range(1, 5)]),
    "sales_followups": ("email_drafting", [
        (_chat("Compose a short follow-up message to a sales lead after a demo. Friendly, concise, with a clear "
               "next step.", f"Lead: {lead}. Demo went well, they asked about pricing tiers."),
         f"Hi {lead.split()[0]},\n\nThanks again for joining the demo yesterday. As promised, I've attached our "
         f"pricing tiers; the Team plan fits what you described. Would a 20-minute call on Thursday work to go "
         f"through questions?\n\nBest regards,\nAlex")
        for lead in ["Dana at Initech", "Sam at Globex", "Lee at Umbrella", "Kim at Hooli", "Ray at Vandelay"]]),
    "invoice_fields": ("structured_extraction", [
        (_chat("Pull out the invoice number, invoice date and total due from the invoice text. Answer as "
               "'field: value' lines.", _invoice(i)),
         f"invoice_number: INV-{1000 + i}\ninvoice_date: 2025-05-{10 + i}\ntotal_due: {440 + 2 * i}.00")
        for i in range(6)]),
    "word_problems": ("complex_reasoning", [
        (_chat("Solve the math word problem. Think step by step and give the final answer on the last line.", q),
         "Step 1: Identify the quantities.\nStep 2: Set up the equation.\nStep 3: Solve it: x = 12.\n"
         "Therefore the answer is 12.")
        for q in ["A train leaves at 3pm at 60 mph...", "A shirt costs $20 after a 20% discount...",
                  "Three workers build a wall in 6 days...", "A tank fills at 5 L/min and drains at 2 L/min..."]]),
}


def test_other_wordings_of_the_same_task_types(con):
    for template_id, (_, calls) in VARIANTS.items():
        _add_template(con, template_id, calls)
    tasks.classify_templates(con)
    got = {r["template_id"]: r["task_type"] for r in rows(con, "SELECT * FROM templates")}
    assert got == {t: expected for t, (expected, _) in VARIANTS.items()}


def test_templates_without_prompts_or_evidence_are_unknown_and_say_why(handmade_con):
    tasks.classify_templates(handmade_con)
    got = {r["template_id"]: r for r in rows(handmade_con, "SELECT * FROM templates")}
    for template_id, reason in [("usage_only", "no prompt text"), ("no_calls", "no requests"),
                                ("translate", "no task type reached")]:
        row = got[template_id]
        assert (row["task_type"], row["tier"], row["task_confidence"]) == ("unknown", None, None), row
        assert reason in json.loads(row["task_evidence"])["reason"]
    # the weak one still shows what it scored
    assert json.loads(got["translate"]["task_evidence"])["scores"]


def test_empty_templates_table(con):
    assert tasks.classify_templates(con) == {"templates": 0, "by_task_type": {}, "by_tier": {},
                                             "sampled_requests": 0, "vectors_read": 0}
