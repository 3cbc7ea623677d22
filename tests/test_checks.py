"""Automatic answer checks (audit.judge.checks) and the MiniLM embedder (audit.judge.embed).

Pure functions: no database. The real all-MiniLM-L6-v2 is loaded once for the
module; every check that does not need it is asserted to exact values.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from audit.errors import ConfigError
from audit.judge.checks import (
    facts_of,
    THRESHOLDS,
    AnswerPair,
    CheckResult,
    check_answers,
    checks_for,
    final_answer,
    lcs_length,
    pairwise_preference,
    request_passed,
    rouge_l,
)
from audit.tasks import TASK_TYPES

ORDER_ANSWER = ("Your order AC-1234567 shipped on Monday and should arrive within three to five business days. "
                "You can follow it with the tracking link in your confirmation email.")
PARAPHRASE = ("We sent out order AC-1234567 on Monday; expect delivery in 3-5 business days. "
              "The tracking link in your confirmation email lets you follow the package.")
UNRELATED = ("To reset your password, open the sign-in page, choose Forgot password and follow the link "
             "we email you.")


@pytest.fixture(scope="module")
def embedder():
    from audit.judge.embed import default_embedder

    return default_embedder()


def check(task_type, original, candidate, embedder=None, prompt="") -> dict[str, CheckResult]:
    [results] = check_answers([AnswerPair(task_type, prompt, original, candidate)], embedder)
    return {r.metric: r for r in results}


# --------------------------------------------------------------------------- labels and short answers


@pytest.mark.parametrize("candidate", [
    "billing", "Billing.", "  'BILLING'  ", "Label: billing", "Category: \"Billing\"", "The category is billing.",
    "```\nbilling\n```",
])
def test_label_match_ignores_case_punctuation_quotes_and_prefixes(candidate):
    result = check("classification", "billing", candidate)["label_match"]
    assert (result.score, result.passed, result.gating, result.reason) == (1.0, True, True, None)


def test_label_with_underscores_matches_spaces_and_hyphens():
    assert check("classification", "shipping_delay", "Shipping delay")["label_match"].passed is True
    assert check("classification", "shipping_delay", "shipping-delay")["label_match"].passed is True


def test_label_mismatch_fails_with_a_one_line_reason():
    result = check("classification", "returns_refunds", "billing")["label_match"]
    assert result == CheckResult("label_match", 0.0, None, False, True, "label 'billing' != original 'returns_refunds'")


@pytest.mark.parametrize("candidate", [
    "not billing",  # negated
    "shipping_delay",
    # a long answer is not a label, even when it names one
    "The customer writes about several things, among them billing, shipping and a damaged lamp in the box",
])
def test_label_fails_when_negated_wrong_or_not_a_label(candidate):
    assert check("classification", "billing", candidate)["label_match"].passed is False


def test_long_classification_original_falls_back_to_free_text(embedder):
    long_original = "This ticket is about billing: the customer was charged twice for order AC-1234567 last week."
    metrics = check("classification", long_original, long_original, embedder)
    assert "label_match" not in metrics and metrics["embedding_similarity"].passed is True


def test_short_faq_answers_get_exact_match_and_long_ones_free_text(embedder):
    short = check("faq_lookup", "9 a.m. to 5 p.m.", "9 am to 5 pm")
    assert list(short) == ["empty_answer", "refusal", "exact_match"] and short["exact_match"].passed is True
    assert check("faq_lookup", "Yes.", "No.")["exact_match"].reason == "answer 'No.' != original 'Yes.'"
    long = check("faq_lookup", ORDER_ANSWER, PARAPHRASE, embedder)
    assert list(long) == ["empty_answer", "refusal", "embedding_similarity", "length_ratio", "rouge_l"]


# --------------------------------------------------------------------------- JSON

ORDER_JSON = '{"order_id": "AC-1234567", "product": "Acme Lumen Basket", "quantity": 2, "issue_type": "damaged"}'


def test_json_in_a_fence_with_prose_is_valid_and_agrees():
    candidate = ('Here is the JSON:\n```json\n{"order_id": "ac-1234567", "product": "Acme Lumen Basket.", '
                 '"quantity": 2, "issue_type": "Damaged"}\n```\nLet me know if you need more.')
    metrics = check("structured_extraction", ORDER_JSON, candidate)
    assert list(metrics) == ["empty_answer", "refusal", "json_valid", "json_schema", "json_fields"]
    assert [(m.score, m.passed) for m in metrics.values()][2:] == [(1.0, True), (1.0, True), (1.0, True)]


def test_json_first_block_in_prose_is_found():
    candidate = 'Sure {not json} then {"order_id": "AC-1234567", "product": "Acme Lumen Basket", "quantity": 2, ' \
                '"issue_type": "damaged"} done'
    assert check("slot_extraction", ORDER_JSON, candidate)["json_fields"].score == 1.0


def test_one_wrong_field_of_four_fails_the_field_agreement():
    candidate = ORDER_JSON.replace('"quantity": 2', '"quantity": 3')
    metrics = check("structured_extraction", ORDER_JSON, candidate)
    assert metrics["json_schema"].passed is True
    assert metrics["json_fields"] == CheckResult(
        "json_fields", 0.75, 0.8, False, True, "3/4 fields agree: quantity 3 != 2")


def test_missing_field_fails_schema_and_fields():
    candidate = '{"order_id": "AC-1234567", "product": "Acme Lumen Basket", "quantity": 2}'
    metrics = check("structured_extraction", ORDER_JSON, candidate)
    assert metrics["json_schema"] == CheckResult("json_schema", 0.75, None, False, True, "missing issue_type")
    assert (metrics["json_fields"].score, metrics["json_fields"].passed) == (0.75, False)
    assert metrics["json_fields"].reason == "3/4 fields agree: issue_type missing"


def test_extra_key_and_wrong_type_fail_the_schema_not_the_fields():
    candidate = ('{"order_id": "AC-1234567", "product": "Acme Lumen Basket", "quantity": "2", '
                 '"issue_type": "damaged", "note": "x"}')
    metrics = check("structured_extraction", ORDER_JSON, candidate)
    assert metrics["json_schema"] == CheckResult("json_schema", 0.6, None, False, True,
                                                 "extra note; type quantity string != number")
    assert metrics["json_fields"].passed is True  # "2" and 2 are the same value


def test_null_matches_null_words_and_any_type():
    original = '{"order_id": null, "quantity": 1}'
    metrics = check("structured_extraction", original, '{"order_id": "N/A", "quantity": 1.0}')
    assert (metrics["json_schema"].passed, metrics["json_fields"].score) == (True, 1.0)


def test_candidate_without_json_fails_validity_and_the_rest_is_not_judged():
    metrics = check("structured_extraction", ORDER_JSON, "The order is AC-1234567, two baskets, damaged.")
    assert metrics["json_valid"] == CheckResult(
        "json_valid", 0.0, None, False, True, "the candidate's answer holds no JSON object or array")
    assert metrics["json_schema"].passed is None and metrics["json_fields"].passed is None
    assert request_passed(list(metrics.values())) is False


def test_original_not_json_falls_back(embedder):
    slots = check("slot_extraction", "city=Paris", "City: Paris")
    assert list(slots)[2:] == ["exact_match"]
    structured = check("structured_extraction", ORDER_ANSWER, PARAPHRASE, embedder)
    assert "json_valid" not in structured and structured["embedding_similarity"].passed is True


def test_nested_json_fields_are_compared_leaf_by_leaf():
    original = '{"customer": {"name": "Ann Lee", "tier": "plus"}, "items": ["lamp", "mug"]}'
    same = '{"customer": {"tier": "Plus", "name": "ann lee"}, "items": ["mug", "lamp"]}'
    assert check("structured_extraction", original, same)["json_fields"].score == 1.0
    wrong = '{"customer": {"name": "Ann Lee", "tier": "basic"}, "items": ["lamp"]}'
    result = check("structured_extraction", original, wrong)["json_fields"]
    assert (result.score, result.passed) == (0.3333, False)


def test_unknown_task_with_a_bare_json_original_gets_the_json_checks():
    assert "json_fields" in check(None, ORDER_JSON, ORDER_JSON)


# --------------------------------------------------------------------------- final answers


@pytest.mark.parametrize("original, candidate", [
    ("42", "The answer is 42.0."),
    ("#### 1,234", "So the total is 1234.\nFinal answer: 1234"),
    ("x = \\boxed{\\frac{1}{2}}", "Answer: 0.5"),
    ("The result rounds to 3.33", "Answer: 3.3333"),
    ("Conclusion: Ann is eligible for a refund of $1,123.45 on order AC-1234567, pending approval (R10).",
     "Step 4: items $1,200.00 - fees $76.55 = $1,123.45.\n\nConclusion: refund $1123.45 to Ann (order AC-1234567)."),
    ("Answer: Yes, she qualifies.", "answer: yes"),
])
def test_final_answers_that_agree(original, candidate):
    result = check("complex_reasoning", original, candidate)["final_answer"]
    assert (result.score, result.passed, result.reason) == (1.0, True, None)


@pytest.mark.parametrize("original, candidate, reason", [
    ("42", "#### 41", "final answer 41 != original 42"),
    ("42", "The answer is 42.4", "final answer 42.4 != original 42"),
    ("Total refund: $100.00. Conclusion: refund of $100.00", "Conclusion: refund of $100.99",
     "final answer 100.99 != original 100"),
    ("Answer: 7", "I am not sure.", "no final answer found; original's is 7"),
])
def test_final_answers_that_differ(original, candidate, reason):
    result = check("complex_reasoning", original, candidate)["final_answer"]
    assert (result.score, result.passed, result.reason) == (0.0, False, reason)


def test_identifiers_and_dates_are_not_final_answers():
    answer = final_answer("Refund requested 2025-03-01 for order AC-1234567 under rule R10 and 3/4/2025.")
    assert answer is None


def test_reasoning_without_a_final_answer_falls_back_to_free_text(embedder):
    essay = "Loyal customers should be treated with patience and care, even when the policy says no."
    metrics = check("complex_reasoning", essay, essay, embedder)
    assert "final_answer" not in metrics and metrics["embedding_similarity"].passed is True


# --------------------------------------------------------------------------- free text


def test_a_paraphrase_passes_and_an_unrelated_answer_fails(embedder):
    paraphrase = check("email_drafting", ORDER_ANSWER, PARAPHRASE, embedder)["embedding_similarity"]
    unrelated = check("email_drafting", ORDER_ANSWER, UNRELATED, embedder)["embedding_similarity"]
    assert paraphrase.passed is True and paraphrase.score == pytest.approx(0.8447, abs=2e-3)
    assert unrelated.passed is False and unrelated.score == pytest.approx(0.0900, abs=2e-3)
    assert unrelated.threshold == THRESHOLDS["embedding_similarity"] == 0.70
    assert unrelated.reason.startswith("meaning differs from the original (similarity 0.09 < 0.70)")


def test_rouge_l_is_shown_and_never_gating(embedder):
    metrics = check("summarization", "the cat sat on the mat", "the cat lay on the red mat", embedder)
    assert metrics["rouge_l"] == CheckResult("rouge_l", round(2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6), 4),
                                             None, None, False, None)


def test_rouge_l_and_lcs_match_the_textbook_table():
    def table_lcs(a, b):
        rows = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                rows[i + 1][j + 1] = rows[i][j] + 1 if x == y else max(rows[i][j + 1], rows[i + 1][j])
        return rows[-1][-1]

    rng = random.Random(11)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randrange(0, 40))]
        b = [rng.choice("abcde") for _ in range(rng.randrange(0, 40))]
        assert lcs_length(a, b) == table_lcs(a, b)
    assert rouge_l("A B C D", "a x c d") == 0.75
    assert rouge_l("anything", "") == 0.0


def test_length_ratio_gates_only_the_wide_range(embedder):
    original = " ".join(["word"] * 30)
    assert check("chat", original, " ".join(["word"] * 12), embedder)["length_ratio"].passed is True   # 0.4x
    too_short = check("chat", original, " ".join(["word"] * 9), embedder)["length_ratio"]               # 0.3x
    assert too_short == CheckResult("length_ratio", 0.3, 3.0, False, True,
                                    "9 words vs original 30: 0.30x, more than 3x shorter")
    # a one-word original against a nine-word answer: far apart in ratio, close in words
    assert check("chat", "Thanks!", "You are welcome, anything else I can help with?", embedder)["length_ratio"].passed


# --------------------------------------------------------------------------- refusals, empty answers, the request


@pytest.mark.parametrize("refusal", [
    "I'm sorry, but I can't help with that.",
    "As an AI language model, I cannot share opinions.",
    "I\u2019m unable to assist with this request.",
    "I must decline.",
])
def test_a_refusal_fails_where_the_original_answered(refusal):
    metrics = check("classification", "billing", refusal)
    assert metrics["refusal"].passed is False and metrics["refusal"].gating is True
    assert metrics["refusal"].reason.endswith("where the original answered")


def test_apologies_and_refusals_by_both_are_not_failures():
    assert check("classification", "billing", "I'm sorry for the trouble: billing")["refusal"].passed is True
    assert check("faq_lookup", "I can't help with that.", "I cannot help with that.")["refusal"].passed is True


@pytest.mark.parametrize("task_type", [None, "classification", "structured_extraction", "chat"])
def test_an_empty_answer_fails_and_gets_no_other_check(task_type):
    metrics = check(task_type, "billing", "  \n ")
    assert list(metrics.values()) == [CheckResult("empty_answer", None, None, False, True,
                                                  "the candidate's answer is empty")]
    assert request_passed(list(metrics.values())) is False


def test_request_passed_counts_only_judgeable_gating_checks():
    ok = CheckResult("label_match", 1.0, None, True, True, None)
    bad = CheckResult("length_ratio", 9.0, 3.0, False, True, "x")
    shown = CheckResult("rouge_l", 0.1, None, None, False, None)
    shown_failing = CheckResult("rouge_l", 0.1, 0.5, False, False, "x")
    unjudged = CheckResult("json_fields", None, 0.8, None, True, "x")
    assert request_passed([ok, shown, shown_failing, unjudged]) is True
    assert request_passed([ok, bad]) is False
    assert request_passed([shown, unjudged]) is None
    assert request_passed([]) is None


def test_an_empty_original_cannot_be_judged_on_free_text():
    metrics = check("chat", "", "Hello!")
    assert metrics["embedding_similarity"].passed is None
    assert request_passed(list(metrics.values())) is True  # empty_answer and refusal still passed


# --------------------------------------------------------------------------- batching, embedder, helpers


def test_batched_scores_equal_one_by_one(embedder):
    pairs = [
        AnswerPair("chat", "", ORDER_ANSWER, PARAPHRASE),
        AnswerPair("classification", "", "billing", "Billing"),
        AnswerPair("summarization", "", ORDER_ANSWER, UNRELATED),
        AnswerPair("email_drafting", "", UNRELATED, UNRELATED + " Thanks!"),
        AnswerPair("code_generation", "", "print('hi')", "print('hello')"),
    ]
    batched = check_answers(pairs, embedder)
    single = [check_answers([pair], embedder)[0] for pair in pairs]
    assert [[r.metric for r in rs] for rs in batched] == [[r.metric for r in rs] for rs in single]
    for batch_results, single_results in zip(batched, single):
        for b, s in zip(batch_results, single_results):
            assert (b.metric, b.passed, b.reason is None) == (s.metric, s.passed, s.reason is None)
            assert b.score == pytest.approx(s.score, abs=1e-4) if b.score is not None else s.score is None


def test_no_embedder_given_uses_the_default_one(embedder):
    assert check("chat", ORDER_ANSWER, PARAPHRASE, None)["embedding_similarity"].passed is True


def test_embedder_vectors_are_normalised_and_similarity_is_pairwise(embedder):
    import numpy as np

    vectors = embedder.embed([ORDER_ANSWER, UNRELATED, ORDER_ANSWER])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
    same = embedder.similarity([ORDER_ANSWER], [ORDER_ANSWER])
    assert same == [pytest.approx(1.0, abs=1e-5)] and embedder.similarity([], []) == []
    with pytest.raises(ValueError):
        embedder.similarity(["a"], [])


def test_embedder_from_a_missing_folder_is_a_config_error(tmp_path):
    from audit.judge.embed import Embedder

    with pytest.raises(ConfigError) as caught:
        Embedder(str(tmp_path / "no-model"))
    assert "no sentence-transformers model" in caught.value.message and caught.value.hint


def test_importing_the_checks_loads_no_model_library():
    code = ("import sys, audit.judge.checks; "
            "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers', 'typer', 'rich') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_checks_for_describes_every_task_type():
    lines = {t: checks_for(t) for t in (*TASK_TYPES, "unknown", None)}
    assert lines["classification"].startswith("label match")
    assert lines["chat"].startswith("embedding similarity >= 0.70") and lines[None] == lines["chat"]
    assert all(line.endswith("always: empty answer, refusal") for line in lines.values())


def test_pairwise_preference_decides_only_on_reference_free_checks():
    prompt = "Extract the order as JSON."
    assert pairwise_preference(prompt, "", "An answer.", None, None) == "2"
    assert pairwise_preference(prompt, "An answer.", "I'm sorry, but I can't help with that.", None, None) == "1"
    assert pairwise_preference(prompt, ORDER_JSON, "order AC-1234567", "structured_extraction", None) == "1"
    # two answers that both pass: the checks cannot tell which is better
    assert pairwise_preference(prompt, ORDER_ANSWER, UNRELATED, None, None) == "tie"


def test_a_similarity_just_under_the_threshold_is_not_shown_as_equal_to_it():
    from audit.judge.checks import similarity_result

    assert similarity_result(0.69951).reason == "meaning differs from the original (similarity 0.6995 < 0.70)"
    assert similarity_result(0.7).passed is True


def test_key_facts_hold_the_candidate_to_the_same_case(embedder):
    prompt = "Where is my order AC-1234567? I paid $129.95 on May 2."
    same_case = check("email_drafting", ORDER_ANSWER + " You paid $129.95.", PARAPHRASE + " The charge was $129.95.",
                      embedder, prompt=prompt)["key_facts"]
    assert (same_case.passed, same_case.score, same_case.gating) == (True, 1.0, True)
    # The right kind of e-mail about another order: similar wording, wrong case.
    other_case = check("email_drafting", ORDER_ANSWER + " You paid $129.95.",
                       PARAPHRASE.replace("AC-1234567", "AC-7654321") + " The charge was $19.95.", embedder,
                       prompt=prompt)["key_facts"]
    assert (other_case.passed, other_case.score) == (False, 0.0)
    assert other_case.reason == ("repeats 0 of the 2 ids and numbers the original took from the prompt "
                                 "(missing 129.95, ac-1234567)")
    # Half is enough; facts the prompt does not hold are not asked for; code gets no such check.
    half = check("email_drafting", ORDER_ANSWER + " You paid $129.95.", PARAPHRASE, embedder, prompt=prompt)["key_facts"]
    assert (half.passed, half.score) == (True, 0.5)
    assert "key_facts" not in check("email_drafting", ORDER_ANSWER, PARAPHRASE, embedder, prompt="where is it?")
    assert "key_facts" not in check("code_generation", ORDER_ANSWER, PARAPHRASE, embedder, prompt=prompt)
    assert facts_of("Refund of $1,250.00 for T-684431, 2 items, on the 13th") == {"1250.00", "t-684431"}
