"""`audit review`: the blind page, its downloads, unblinding on import, human verdicts, agreement.

Replays come from the fake engine (instant); the page is exercised for real in
headless Chromium (Debian's package) through playwright.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from audit import db as audit_db
from audit.backends import parse_candidate, replay_messages
from audit.errors import AuditError, ConfigError, InputError
from audit.pricing import PriceBook
from audit.replay import plan_replay, replay
from audit.judge.decisions import cohen_kappa
from audit.review import export_review, human_agreement, import_review
from conftest import rows, run_audit

# Distinctive names, so that finding them in the page can only mean a leak.
CANDIDATES = ("zzcand-one=fake:tinyq-one?input_price=1&output_price=2",
              "zzcand-two=fake:tinyq-two?input_price=1&output_price=2")
SECRET_NAMES = ("zzcand-one", "zzcand-two", "tinyq-one", "tinyq-two", "gpt-4o", "fake:")
PAYLOAD = "<script>window.__pwned=1</script> </textarea><b>bold</b> <!-- x"


def make_replays(con, per_template: int = 1) -> None:
    plan = plan_replay(con, [parse_candidate(c) for c in CANDIDATES], book=PriceBook(), per_template=per_template)
    replay(con, plan, max_cost_usd=1.0)


def plant_payload(con) -> str:
    """Put markup into one sampled request (its last user turn and production's answer); return its id."""
    request_id, messages = con.execute("""
        SELECT s.request_id, r.messages FROM samples s JOIN requests r USING (request_id)
        WHERE s.sample_set_id = 'n500-s7' AND s.draw_rank = 1 ORDER BY s.template_id LIMIT 1""").fetchall()[0]
    messages = json.loads(messages)
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    messages[last_user]["content"] = PAYLOAD + " " + messages[last_user]["content"]
    con.execute("UPDATE requests SET messages = ?, response_text = ? WHERE request_id = ?",
                [json.dumps(messages), PAYLOAD + " production says hi", request_id])
    return request_id


@pytest.fixture
def reviewed_db(sampled_db):
    """The sampled copy with the payload planted and both fake candidates replayed (first request of each template)."""
    con = audit_db.connect(sampled_db)
    plant_payload(con)
    make_replays(con)
    con.close()
    return sampled_db


def items_of(con, export_id: str) -> dict[str, dict]:
    return {r["item_id"]: r for r in rows(con, "SELECT * FROM review_items WHERE export_id = ? ORDER BY position", [export_id])}


def expected_outcome(choice: str, candidate_side: str) -> str:
    if choice in ("A", "B"):
        return "candidate_better" if choice == candidate_side else "original_better"
    return choice


def write_csv(path: Path, export_id: str, reviewer: str, choices: dict[str, str]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["export_id", "reviewer", "item_id", "choice", "reviewed_at"])
        for item_id, choice in choices.items():
            writer.writerow([export_id, reviewer, item_id, choice, "2025-06-01T10:00:00.000Z"])
    return path


def page_data(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="review-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


# --------------------------------------------------------------------------- export


def test_export_is_blind_escaped_and_records_what_was_shown_where(reviewed_db, tmp_path):
    con = audit_db.connect(reviewed_db)
    result = export_review(con, out=tmp_path, per_template=1, seed=3)
    page = Path(result["path"]).read_text()
    assert Path(result["path"]).name == f"review-{result['export_id']}.html"
    assert re.fullmatch(r"r\d{8}-\d{6}-[0-9a-f]{6}", result["export_id"])
    templates = con.execute("SELECT count(DISTINCT template_id) FROM samples WHERE sample_set_id = 'n500-s7'").fetchall()[0][0]
    assert result["items"] == 2 * templates and result["per_candidate"] == {"zzcand-one": templates, "zzcand-two": templates}

    stored = items_of(con, result["export_id"])
    assert [r["position"] for r in stored.values()] == list(range(1, result["items"] + 1))
    assert {r["candidate_side"] for r in stored.values()} == {"A", "B"}
    # Each item shows the candidate's answer on its side and production's on the other.
    data = page_data(page)
    assert [i["id"] for i in data["items"]] == list(stored)
    for item in data["items"]:
        row = stored[item["id"]]
        answer = con.execute("SELECT response_text FROM replays WHERE request_id = ? AND candidate = ?",
                             [row["request_id"], row["candidate"]]).fetchall()[0][0]
        original, messages = con.execute("SELECT response_text, messages FROM requests WHERE request_id = ?",
                                         [row["request_id"]]).fetchall()[0]
        assert data["conversations"][item["conversation"]] == [
            {"role": m["role"], "text": m["content"]} for m in replay_messages(messages)]
        shown = {"A": item["a"], "B": item["b"]}
        assert shown[row["candidate_side"]] == answer
        assert shown["B" if row["candidate_side"] == "A" else "A"] == original

    # Blind: no model or candidate name anywhere, only opaque ids and neutral keys.
    for name in SECRET_NAMES:
        assert name not in page.lower(), name
    assert set(data) == {"export_id", "sample_set_id", "conversations", "items"}
    assert all(set(i) == {"id", "task", "task_type", "conversation", "a", "b"} for i in data["items"])
    outside_data = page.replace(re.search(r'id="review-data">.*?</script>', page, re.S).group(0), "")
    for word in ("original", "production", "candidate", "cheap"):
        assert word not in outside_data.lower(), word
    # Logged text is data: it never appears as markup in the source, only escaped inside the JSON.
    assert "<script>window.__pwned" not in page and "</textarea><b>" not in page and "<!-- x" not in page
    assert "\\u003cscript\\u003ewindow.__pwned=1\\u003c/script\\u003e" in page
    assert sum(PAYLOAD in i["a"] + i["b"] for i in data["items"]) == 2
    assert sum(PAYLOAD in turn["text"] for conversation in data["conversations"] for turn in conversation) == 1
    # Only the page's own script may run (CSP by hash), and nothing may be fetched.
    assert "default-src 'none'; script-src 'sha256-" in page and "innerHTML" not in page


def test_same_options_same_page_but_a_new_export_id(reviewed_db, tmp_path):
    con = audit_db.connect(reviewed_db)
    first = export_review(con, out=tmp_path / "one.html", per_template=1, seed=5)
    second = export_review(con, out=tmp_path / "two.html", per_template=1, seed=5)
    other_seed = export_review(con, out=tmp_path / "three.html", per_template=1, seed=6)
    assert first["export_id"] != second["export_id"]

    def shown(export_id):
        return [(r["request_id"], r["candidate"], r["candidate_side"]) for r in items_of(con, export_id).values()]

    assert shown(first["export_id"]) == shown(second["export_id"]) != shown(other_seed["export_id"])
    assert page_data((tmp_path / "one.html").read_text())["items"] == page_data((tmp_path / "two.html").read_text())["items"]


def test_candidate_filter_per_template_and_errors(reviewed_db, tmp_path):
    con = audit_db.connect(reviewed_db)
    only = export_review(con, out=tmp_path, candidates=["zzcand-two"])
    assert only["per_candidate"] == {"zzcand-two": only["items"]}
    with pytest.raises(ConfigError, match="no answers of candidate nope") as caught:
        export_review(con, out=tmp_path, candidates=["nope"])
    assert "zzcand-one, zzcand-two" in caught.value.one_line()
    with pytest.raises(ConfigError, match="no sample set 'n1-s1'"):
        export_review(con, out=tmp_path, sample_set_id="n1-s1")
    with pytest.raises(ConfigError, match="does not exist"):
        export_review(con, out=tmp_path / "missing" / "page.html")
    con.execute("DELETE FROM replays")
    with pytest.raises(AuditError, match="no replayed answers to review"):
        export_review(con, out=tmp_path)


# --------------------------------------------------------------------------- import


def test_csv_import_unblinds_and_writes_human_verdicts(reviewed_db, tmp_path):
    con = audit_db.connect(reviewed_db)
    export_id = export_review(con, out=tmp_path, per_template=1, seed=3)["export_id"]
    items = items_of(con, export_id)
    choices = dict(zip(list(items)[:6], ["A", "B", "both_fine", "both_bad", "A", "B"]))
    summary = import_review(con, write_csv(tmp_path / "bob.csv", export_id, "bob", choices))
    assert summary["items_imported"] == 6 and summary["replaced"] == 0 and summary["reviewers"] == ["bob"]

    stored = {r["item_id"]: r for r in rows(con, "SELECT * FROM reviews")}
    assert set(stored) == set(choices)
    for item_id, choice in choices.items():
        review, item = stored[item_id], items[item_id]
        outcome = expected_outcome(choice, item["candidate_side"])
        assert (review["choice"], review["outcome"], review["candidate"], review["request_id"]) == (
            choice, outcome, item["candidate"], item["request_id"])
        assert review["passed"] == (outcome in ("candidate_better", "both_fine"))
        assert str(review["reviewed_at"]) == "2025-06-01 10:00:00"
    verdicts = {(r["request_id"], r["candidate"]): r for r in rows(con, "SELECT * FROM verdicts WHERE source = 'human'")}
    assert len(verdicts) == 6
    for review in stored.values():
        verdict = verdicts[(review["request_id"], review["candidate"])]
        assert (verdict["metric"], verdict["passed"], verdict["gating"], verdict["threshold"]) == ("human", review["passed"], True, None)
        assert verdict["score"] == (1.0 if review["passed"] else 0.0)
        assert verdict["reason"] == f"reviewer bob: {review['outcome'].replace('_', ' ')}"
    # The summary counts outcomes per candidate, from the rows just stored.
    for entry in summary["per_candidate"]:
        mine = [r for r in stored.values() if r["candidate"] == entry["candidate"]]
        assert entry["reviewed"] == len(mine) and entry["passed"] == sum(r["passed"] for r in mine)
        assert sum(entry[o] for o in ("candidate_better", "original_better", "both_fine", "both_bad")) == len(mine)


def test_reimport_replaces_and_never_duplicates(reviewed_db, tmp_path):
    con = audit_db.connect(reviewed_db)
    export_id = export_review(con, out=tmp_path, per_template=1, seed=3)["export_id"]
    ids = list(items_of(con, export_id))[:3]
    path = write_csv(tmp_path / "r.csv", export_id, "bob", dict.fromkeys(ids, "both_fine"))
    import_review(con, path)
    again = import_review(con, path)
    assert again["replaced"] == 3
    assert con.execute("SELECT count(*) FROM reviews").fetchall()[0][0] == 3
    assert con.execute("SELECT count(*) FROM verdicts WHERE source = 'human'").fetchall()[0][0] == 3
    # A later file with a changed verdict replaces it; items it lacks keep their earlier verdict.
    import_review(con, write_csv(tmp_path / "r2.csv", export_id, "bob", {ids[0]: "both_bad"}))
    assert rows(con, "SELECT item_id, choice FROM reviews ORDER BY item_id") == [
        {"item_id": ids[0], "choice": "both_bad"}, {"item_id": ids[1], "choice": "both_fine"}, {"item_id": ids[2], "choice": "both_fine"}]
    assert con.execute("SELECT count(*) FILTER (WHERE passed), count(*) FROM verdicts WHERE source = 'human'").fetchall()[0] == (2, 3)


def test_several_reviewers_majority_and_ties(reviewed_db, tmp_path):
    con = audit_db.connect(reviewed_db)
    export_id = export_review(con, out=tmp_path, per_template=1, seed=3)["export_id"]
    item = list(items_of(con, export_id))[0]
    key = items_of(con, export_id)[item]

    def human():
        return rows(con, "SELECT score, passed, reason FROM verdicts WHERE source = 'human' AND request_id = ? AND candidate = ?",
                    [key["request_id"], key["candidate"]])[0]

    import_review(con, write_csv(tmp_path / "a.csv", export_id, "ann", {item: "both_fine"}))
    import_review(con, write_csv(tmp_path / "b.csv", export_id, "bob", {item: "both_bad"}))
    tie = human()
    assert tie["passed"] is None and tie["score"] == 0.5
    assert tie["reason"] == "2 reviewers split, 1 passed: ann: both fine; bob: both bad"
    import_review(con, write_csv(tmp_path / "c.csv", export_id, "cy", {item: "both_bad"}))
    majority = human()
    assert majority["passed"] is False and majority["score"] == pytest.approx(1 / 3)
    assert majority["reason"].startswith("3 reviewers, 1 passed: ann: both fine; bob: both bad; cy: both bad")


@pytest.mark.parametrize("name, text, message", [
    ("bad.json", '{"export_id": "x", "verdicts": [', r"bad\.json: not valid JSON \(line 1"),
    ("shape.json", '[1, 2]', r"shape\.json: not a review download"),
    ("choice.json", '{"export_id": "E", "reviewer": "a", "verdicts": [{"item_id": "i001", "choice": "C"}]}',
     r"choice\.json: verdict 1: choice 'C' is not one of A, B, both_fine, both_bad"),
    ("noname.json", '{"export_id": "E", "reviewer": "", "verdicts": [{"item_id": "i001", "choice": "A"}]}',
     r"the reviewer name is empty"),
    ("empty.json", '{"export_id": "E", "reviewer": "a", "verdicts": []}', r"empty\.json: holds no verdicts"),
    ("header.csv", "export_id,item_id\nE,i001\n", r"header\.csv:1: not a review download: the CSV header lacks reviewer, choice"),
    ("line.csv", "export_id,reviewer,item_id,choice,reviewed_at\nE,a,i001,A,\nE,a,i002,maybe,\n",
     r"line\.csv:3: choice 'maybe' is not one of"),
    ("time.csv", "export_id,reviewer,item_id,choice,reviewed_at\nE,a,i001,A,yesterday\n", r"time\.csv:2: reviewed_at 'yesterday'"),
    ("twice.csv", "export_id,reviewer,item_id,choice,reviewed_at\nE,a,i001,A,\nE,a,i001,B,\n", r"appears twice"),
])
def test_malformed_files_are_one_line_errors_naming_the_file(reviewed_db, tmp_path, name, text, message):
    con = audit_db.connect(reviewed_db)
    export_id = export_review(con, out=tmp_path, per_template=1, seed=3)["export_id"]
    path = tmp_path / name
    path.write_text(text.replace('"E"', json.dumps(export_id)).replace("E,", export_id + ","))
    with pytest.raises(InputError, match=message) as caught:
        import_review(con, path)
    assert "\n" not in caught.value.one_line() and caught.value.hint
    assert con.execute("SELECT count(*) FROM reviews").fetchall()[0][0] == 0


def test_unknown_export_or_item_stores_nothing(reviewed_db, tmp_path):
    con = audit_db.connect(reviewed_db)
    export_id = export_review(con, out=tmp_path, per_template=1, seed=3)["export_id"]
    with pytest.raises(AuditError, match="is for review export r-other, which this database does not have") as caught:
        import_review(con, write_csv(tmp_path / "x.csv", "r-other", "bob", {"i001": "A"}))
    assert "--db" in caught.value.hint
    with pytest.raises(AuditError, match=f"names items that export {export_id} does not have: i999"):
        import_review(con, write_csv(tmp_path / "y.csv", export_id, "bob", {"i001": "A", "i999": "B"}))
    assert con.execute("SELECT count(*) FROM reviews").fetchall()[0][0] == 0
    assert con.execute("SELECT count(*) FROM verdicts").fetchall()[0][0] == 0


# --------------------------------------------------------------------------- agreement


def test_cohen_kappa_by_hand():
    # po = 3/4; p(pass) 3/4 and 2/4; pe = .75·.5 + .25·.5 = .5; kappa = (.75 - .5) / .5
    assert cohen_kappa([(True, True), (True, False), (False, False), (True, True)]) == pytest.approx(0.5)
    assert cohen_kappa([(True, True), (False, False)]) == pytest.approx(1.0)
    assert cohen_kappa([(True, True), (True, True)]) is None   # both always pass: chance agreement is certain
    assert cohen_kappa([]) is None


def test_agreement_with_checks_and_judge(reviewed_db, tmp_path):
    con = audit_db.connect(reviewed_db)
    export_id = export_review(con, out=tmp_path, candidates=["zzcand-one"], per_template=1, seed=3)["export_id"]
    items = list(items_of(con, export_id).values())[:5]
    # Human pass/fail: T, T, F, F, T (both_fine passes, both_bad fails, whatever the sides).
    human = [True, True, False, False, True]
    import_review(con, write_csv(tmp_path / "h.csv", export_id, "ann",
                                 {i["item_id"]: "both_fine" if h else "both_bad" for i, h in zip(items, human)}))

    def verdict(item, source, metric, passed, gating=True):
        con.execute("INSERT INTO verdicts VALUES ('n500-s7', ?, ?, ?, ?, NULL, NULL, ?, ?, NULL, now())",
                    [item["request_id"], item["candidate"], source, metric, passed, gating])

    # Checks per request: all gating passed -> pass, any failed -> fail, non-gating ignored, unjudged left out.
    checks = [[True, True], [True, False], [False], [None, True], [True]]   # -> T, F, F, (left out), T
    for item, results in zip(items, checks):
        for n, passed in enumerate(results):
            verdict(item, "check", f"m{n}", passed)
        verdict(item, "check", "shown_only", False, gating=False)
    for item, passed in zip(items, [True, False, False, True, None]):   # judge: T, F, F, T, (unjudged)
        verdict(item, "judge", "pairwise", passed)

    found = {r["source"]: r for r in human_agreement(con, "n500-s7")}
    assert set(found) == {"check", "judge"}
    # check: pairs (T,T) (T,F) (F,F) (T,T): n 4, agreement 3/4, kappa 0.5 (worked out above).
    assert (found["check"]["n"], found["check"]["agreed"]) == (4, 3)
    assert found["check"]["agreement"] == pytest.approx(0.75) and found["check"]["kappa"] == pytest.approx(0.5)
    assert (found["check"]["both_passed"], found["check"]["both_failed"], found["check"]["human_only_passed"]) == (2, 1, 1)
    # judge: pairs (T,T) (T,F) (F,F) (F,T): agreement 1/2; po .5, pe .5·.5 + .5·.5 = .5 -> kappa 0.
    assert (found["judge"]["n"], found["judge"]["agreed"]) == (4, 2)
    assert found["judge"]["kappa"] == pytest.approx(0.0)
    # The import summary carries the same figures.
    summary = import_review(con, tmp_path / "h.csv")
    assert {r["source"]: r["kappa"] for r in summary["agreement"]} == {"check": pytest.approx(0.5), "judge": pytest.approx(0.0)}


# --------------------------------------------------------------------------- the CLI


def test_cli_export_prints_the_path_and_import_prints_json(reviewed_db, tmp_path):
    result = run_audit("review", "export", "--db", str(reviewed_db), "--per-template", "1", "--seed", "2",
                       "--candidate", "zzcand-one", "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = Path(result.stdout.strip())
    assert result.stdout.count("\n") == 1 and page.exists() and page.parent == tmp_path
    export_id = page.stem.removeprefix("review-")
    assert export_id in result.stderr
    csv_path = write_csv(tmp_path / "v.csv", export_id, "dee", {"i001": "both_fine", "i002": "both_bad"})
    imported = run_audit("review", "import", str(csv_path), "--db", str(reviewed_db), "--json")
    assert imported.returncode == 0, imported.stderr
    summary = json.loads(imported.stdout)
    assert summary["items_imported"] == 2 and summary["per_candidate"][0]["candidate"] == "zzcand-one"
    assert "imported 2 verdicts by dee" in imported.stderr

    bad = run_audit("review", "import", str(write_csv(tmp_path / "w.csv", export_id, "dee", {"i404": "A"})),
                    "--db", str(reviewed_db))
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().startswith("error:") and "i404" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_audit("review", "export", "--db", str(tmp_path / "nothing.duckdb"))
    assert missing.returncode == 1 and "no audit database" in missing.stderr
    assert not (tmp_path / "nothing.duckdb").exists()


# --------------------------------------------------------------------------- in a real browser


@pytest.mark.slow
def test_review_page_in_chromium_end_to_end(reviewed_db, tmp_path, chromium_browser):
    browser = chromium_browser
    con = audit_db.connect(reviewed_db)
    export = export_review(con, out=tmp_path, per_template=1, seed=3)
    export_id, total = export["export_id"], export["items"]
    items = items_of(con, export_id)
    con.close()
    url = Path(export["path"]).as_uri()
    reviewer = 'Ann "QA", 3rd'   # a quote, a comma and a digit typed into the name field

    console, requests = [], []
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url)

    def current() -> str:
        return page.locator("section.item:not([hidden])").get_attribute("data-item-id")

    # Planted markup is shown as text, never run or parsed.
    assert page.evaluate("typeof window.__pwned") == "undefined"
    texts = page.locator("section.item").all_text_contents()
    assert sum(PAYLOAD in t for t in texts) == 2   # one request, shown with both candidates
    assert page.locator("#items b, #items textarea, #items script").count() == 0
    assert page.text_content("#progress") == f"0 / {total} reviewed"

    # Keyboard: cast, move back and recast, move with arrows and j/k.
    assert current() == "i001"
    for key in ("1", "2", "k", "3", "ArrowRight", "4", "ArrowLeft", "j", "2"):
        page.keyboard.press(key)
    expected = {"i001": "A", "i002": "both_fine", "i004": "both_bad", "i005": "B"}
    assert current() == "i006"
    assert page.text_content("#progress") == f"4 / {total} reviewed"
    page.locator("section.item:not([hidden])").get_by_role("button", name="4 · Both bad").click()
    page.keyboard.press("k")
    page.keyboard.press("0")   # clears i006 again
    assert page.text_content("#progress") == f"4 / {total} reviewed"

    # Typing the name does not cast verdicts.
    page.click("#reviewer")
    page.keyboard.type(reviewer)
    page.keyboard.press("Escape")
    assert page.text_content("#progress") == f"4 / {total} reviewed"

    # Reload: verdicts, name and position are kept (localStorage, keyed by export id).
    page.reload()
    assert page.text_content("#progress") == f"4 / {total} reviewed"
    assert page.input_value("#reviewer") == reviewer and current() == "i006"
    assert "Your verdict: Both bad" in page.locator('section[data-item-id="i004"]').text_content()

    with page.expect_download() as json_download:
        page.click("#download-json")
    json_path = tmp_path / "download.json"
    json_download.value.save_as(json_path)
    with page.expect_download() as csv_download:
        page.click("#download-csv")
    csv_path = tmp_path / "download.csv"
    csv_download.value.save_as(csv_path)
    assert json_download.value.suggested_filename.startswith(f"review-{export_id}-Ann")

    assert [c for c in console if c.startswith(("error", "pageerror"))] == [], console
    assert [u for u in requests if not u.startswith("blob:")] == [url, url], requests   # the page, then its reload

    downloaded = json.loads(json_path.read_text())
    assert (downloaded["export_id"], downloaded["reviewer"]) == (export_id, reviewer)
    assert {v["item_id"]: v["choice"] for v in downloaded["verdicts"]} == expected
    with csv_path.open(newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert [(r["export_id"], r["reviewer"], r["item_id"], r["choice"], r["reviewed_at"]) for r in csv_rows] == [
        (export_id, reviewer, v["item_id"], v["choice"], v["reviewed_at"]) for v in downloaded["verdicts"]]

    result = run_audit("review", "import", str(json_path), "--db", str(reviewed_db), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["items_imported"] == 4

    con = audit_db.connect(reviewed_db)
    stored = {r["item_id"]: r for r in rows(con, "SELECT * FROM reviews")}
    assert set(stored) == set(expected)
    for item_id, choice in expected.items():
        item = items[item_id]
        outcome = expected_outcome(choice, item["candidate_side"])
        assert (stored[item_id]["reviewer"], stored[item_id]["choice"], stored[item_id]["outcome"]) == (reviewer, choice, outcome)
        verdict = rows(con, "SELECT passed, reason FROM verdicts WHERE source = 'human' AND request_id = ? AND candidate = ?",
                       [item["request_id"], item["candidate"]])
        assert verdict == [{"passed": outcome in ("candidate_better", "both_fine"),
                            "reason": f"reviewer {reviewer}: {outcome.replace('_', ' ')}"}]
    con.close()

    # The CSV download of the same verdicts re-imports as a replacement, not as duplicates.
    again = run_audit("review", "import", str(csv_path), "--db", str(reviewed_db), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["replaced"] == 4
    con = audit_db.connect(reviewed_db)
    assert con.execute("SELECT count(*) FROM reviews").fetchall()[0][0] == 4
