"""The close-code knowledge base: complete texts, and defaults computed from the policy."""

from __future__ import annotations

import itertools
import json
import re
import string
from typing import Any

import pytest

from tether.backoff import BackoffConfig
from tether.closecodes import MAX_CLOSE_CODE, REGISTRY, lookup
from tether.exceptions import ConfigurationError
from tether.knowledge import (
    LANGUAGES,
    TEXT_FIELDS,
    catalog,
    compare,
    explain,
    load_texts,
    summary,
)
from tether.policy import Action, DelayRule, ReconnectPolicy
from tether.protocol import TetherCloseCode

JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")
KEYS = [info.key for info in REGISTRY]
CONFIG = BackoffConfig()

#: The documented JSON fields of ``tether explain --json`` (docs/close-codes.md).
EXPLANATION_FIELDS = {
    "code",
    "key",
    "name",
    "title",
    "category",
    "may_send",
    "sender",
    "registered",
    "summary",
    "meaning",
    "causes",
    "client_action",
    "server_action",
    "use_when",
    "tether_default",
    "policy",
    "lang",
    "tether_v1",
}


def _codes_per_range() -> list[int]:
    """Every code 0-5000, plus samples of 5001-65535."""
    return [*range(5001), 5001, 6000, 9999, 40000, MAX_CLOSE_CODE]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    return []


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


# --- the texts ---------------------------------------------------------------------------


def test_languages_are_english_and_japanese() -> None:
    """English is the default language, Japanese the other one."""
    assert LANGUAGES == ("en", "ja")


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_registry_entry_has_a_text(lang: str) -> None:
    """Each language file has exactly one entry per registry code and range."""
    assert set(load_texts(lang)["entries"]) == set(KEYS)


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("key", KEYS)
def test_every_entry_fills_every_field(lang: str, key: str) -> None:
    """Every field is present and non-empty; causes is a non-empty list of non-empty strings."""
    entry = load_texts(lang)["entries"][key]
    for field in TEXT_FIELDS:
        value = entry.get(field)
        if field == "causes":
            assert isinstance(value, list), (key, field)
            assert value, (key, field)
            assert all(isinstance(c, str) and c.strip() for c in value), (key, field)
        else:
            assert isinstance(value, str), (key, field)
            assert value.strip(), (key, field)


@pytest.mark.parametrize("key", KEYS)
def test_japanese_entries_are_written_in_japanese(key: str) -> None:
    """Every Japanese text of an entry (gloss included) contains Japanese characters."""
    entry = load_texts("ja")["entries"][key]
    for text in _strings({f: entry[f] for f in (*TEXT_FIELDS, "gloss")}):
        assert JAPANESE.search(text), (key, text)


@pytest.mark.parametrize("section", ["rules", "rules_short", "differences", "pairs", "senders"])
def test_japanese_phrases_are_written_in_japanese(section: str) -> None:
    """The computed-text templates of the Japanese file are Japanese too."""
    for text in _strings(load_texts("ja")[section]):
        assert JAPANESE.search(text), (section, text)


def test_english_texts_contain_no_japanese() -> None:
    """The English file is not accidentally mixed with Japanese."""
    for text in _strings(load_texts("en")):
        assert not JAPANESE.search(text), text


@pytest.mark.parametrize(
    "section",
    ["labels", "senders", "senders_short", "categories", "categories_short", "rules"],
)
def test_languages_share_labels_and_placeholders(section: str) -> None:
    """Both files define the same labels, with the same placeholders in each template."""
    en, ja = load_texts("en")[section], load_texts("ja")[section]
    assert set(en) == set(ja)
    for name in en:
        assert _placeholders(en[name]) == _placeholders(ja[name]), (section, name)


def test_languages_share_difference_templates() -> None:
    """The comparison templates and pair notes exist in both languages."""
    en, ja = load_texts("en"), load_texts("ja")
    assert set(en["differences"]) == set(ja["differences"])
    assert set(en["pairs"]) == set(ja["pairs"])
    for name, template in en["differences"].items():
        assert _placeholders(template) == _placeholders(ja["differences"][name]), name


def test_pair_notes_name_registered_codes_in_order() -> None:
    """Pair keys are "low|high" of two codes with their own registry entry."""
    for key in load_texts("en")["pairs"]:
        low, high = (int(part) for part in key.split("|"))
        assert low < high
        assert lookup(low).key == str(low)
        assert lookup(high).key == str(high)


def test_texts_never_state_send_rules_as_data() -> None:
    """may_send and sender are not written into the language files (they come from the registry)."""
    for lang in LANGUAGES:
        for entry in load_texts(lang)["entries"].values():
            assert not {"may_send", "sender", "category", "tether_default"} & set(entry)


def test_unknown_language_is_a_configuration_error() -> None:
    """Every entry point refuses a language it does not have."""
    for call in (
        lambda: explain(1006, "fr"),
        lambda: summary(1006, "fr"),
        lambda: compare(1006, 1012, "fr"),
        lambda: catalog("fr"),
        lambda: load_texts("fr"),
    ):
        with pytest.raises(ConfigurationError, match="unknown language 'fr'"):
            call()


@pytest.mark.parametrize("code", [-1, MAX_CLOSE_CODE + 1, 99999])
def test_out_of_range_code_is_a_configuration_error(code: int) -> None:
    """A number that no Close frame can carry is refused, not explained."""
    with pytest.raises(ConfigurationError, match="outside"):
        explain(code)


def test_non_integer_code_is_a_configuration_error() -> None:
    """A string is not a close code."""
    with pytest.raises(ConfigurationError, match="integer"):
        explain("1006")  # type: ignore[arg-type]


# --- computed facts ----------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 999, 1000, 1004, 1006, 1010, 1012, 1016, 3000, 4000, 5000])
def test_may_send_and_sender_come_from_the_registry(code: int) -> None:
    """may_send, sender and category are the registry's, never re-typed."""
    info = lookup(code)
    for lang in LANGUAGES:
        explanation = explain(code, lang)
        assert explanation.may_send is info.may_send
        assert explanation.sender is info.sender
        assert explanation.category is info.category
        assert explanation.name == info.name


def test_tether_default_agrees_with_the_policy_for_every_code() -> None:
    """For every code 0-5000 (and samples above), the text is computed from the policy."""
    policy = ReconnectPolicy()
    low, high = CONFIG.restart_window
    for code in _codes_per_range():
        explanation = explain(code)
        decision = policy.decide(code)
        assert explanation.decision == decision, code
        text = explanation.tether_default
        assert f"policy row {decision.source}" in text, code
        if decision.rule.action is Action.FINAL:
            assert text.startswith("No reconnect"), code
        elif decision.rule.delay is DelayRule.RESTART:
            assert f"{low:g}–{high:g} s" in text, code
        elif decision.rule.delay is DelayRule.TRY_AGAIN_LATER:
            assert f"{CONFIG.try_again_floor:g} s" in text, code
        else:
            assert f"{CONFIG.base:g} s" in text, code
            assert f"{CONFIG.cap:g} s" in text, code


def test_japanese_tether_default_follows_the_same_policy() -> None:
    """The Japanese default text is computed from the same decision as the English one."""
    for code in (1000, 1006, 1012, 1013, 3499, 3500, 4499, 4500):
        en, ja = explain(code, "en"), explain(code, "ja")
        assert ja.decision == en.decision
        assert f"ポリシー表の {en.decision.source} 行" in ja.tether_default


#: Advice that only a final policy row carries out.
_DO_NOT_RETRY = re.compile(
    r"do not (retry|reconnect)(?! in a tight loop)|will fail the same way|will be refused again",
    re.IGNORECASE,
)


@pytest.mark.parametrize("code", [info.low for info in REGISTRY if not info.is_range])
def test_advice_not_to_retry_names_the_rule_when_the_default_reconnects(code: int) -> None:
    """Text that says "do not retry" over a row that reconnects must say how to make it final.

    (3003 told users not to retry while the client reconnected with backoff, and its
    text did not say so.)
    """
    entry = explain(code)
    if entry.decision.rule.action is Action.RECONNECT and _DO_NOT_RETRY.search(entry.client_action):
        assert f"ReconnectPolicy({{{code}: Rule.final()}})" in entry.client_action


def test_the_reserved_label_holds_for_1004_too() -> None:
    """1004 is reserved but never reported locally (RFC 6455 §7.4.1), unlike 1005/1006/1015."""
    for lang in LANGUAGES:
        label = load_texts(lang)["categories"]["reserved"]
        assert "locally" not in label, lang
        assert "ローカル" not in label, lang


def test_tether_default_numbers_are_the_backoff_defaults() -> None:
    """The 1006 text prints the BackoffConfig defaults (0.5 s, ×2, 30 s, 10 s)."""
    text = explain(1006).tether_default
    assert "0.5 s" in text
    assert "×2" in text
    assert "30 s" in text
    assert "open 10 s" in text


# --- the entries DESIGN.md §1 insists on ----------------------------------------------------


def test_1006_carries_the_design_facts() -> None:
    """1006: reserved, local, no Close frame; crash/cable/idle kill; backoff, ping/pong, idle."""
    e = explain(1006)
    assert e.may_send is False
    assert "reserved" in e.meaning
    assert "locally" in e.meaning
    assert "without a Close frame" in e.meaning
    causes = " ".join(e.causes)
    for word in ("crashed", "cable pulled", "load balancer", "firewall", "idle"):
        assert word in causes, word
    for word in ("exponential backoff", "ping", "pong", "idle limits", "timeouts"):
        assert word in e.client_action, word


def test_1012_carries_the_design_facts() -> None:
    """1012: restart (deploy, reload), brief randomized delay, 1–5 s vs IANA 5–30 s, succeeds."""
    e = explain(1012)
    assert "restarting" in e.meaning
    assert "deploy" in e.meaning
    assert "configuration reload" in e.meaning
    assert "expected to succeed" in e.meaning
    assert "1–5 s" in e.client_action
    assert "randomized 5–30 s" in e.client_action
    assert "IANA" in e.client_action


def test_1006_in_japanese_carries_the_same_facts() -> None:
    """The Japanese 1006 entry says: never sent, backoff, ping/pong, idle limits."""
    e = explain(1006, "ja")
    assert "決して" in e.meaning
    assert "ローカル" in e.meaning
    for word in ("指数バックオフ", "ping", "pong", "アイドル制限", "タイムアウト"):
        assert word in e.client_action, word


def test_1012_in_japanese_carries_the_same_facts() -> None:
    """The Japanese 1012 entry has the 1〜5 秒 guidance and the IANA 5〜30 秒 text."""
    e = explain(1012, "ja")
    assert "1〜5 秒" in e.client_action
    assert "5〜30 秒" in e.client_action
    assert "IANA" in e.client_action
    assert "デプロイ" in e.meaning


# --- explain / summary ----------------------------------------------------------------------


def test_summary_is_one_line() -> None:
    """summary(1006) is the documented one-liner."""
    assert summary(1006) == "1006 Abnormal Closure: the connection dropped without a Close frame"


def test_summary_in_japanese_adds_a_gloss() -> None:
    """The Japanese summary keeps the registered name and adds the Japanese term."""
    assert (
        summary(1006, "ja") == "1006 Abnormal Closure（異常切断）: Close フレームなしで接続が切れた"
    )


def test_summary_of_a_range_code_reports_the_code_and_the_range() -> None:
    """A code without its own entry is summarised by its range, keeping its number."""
    line = summary(4001)
    assert line.startswith("4001 Private Use (4000-4999): ")


def test_every_summary_is_a_single_line() -> None:
    """No summary contains a line break (it goes into logs and events)."""
    for lang in LANGUAGES:
        for code in (*(info.low for info in REGISTRY), 4242, 65535):
            assert "\n" not in summary(code, lang)


def test_range_code_is_explained_by_its_range() -> None:
    """explain(3500) uses the 3000-3999 texts but reports code 3500 and its own default."""
    e = explain(3500)
    assert e.code == 3500
    assert e.key == "3000-3999"
    assert e.registered is False
    assert e.decision.source == "3500-3999"


def test_explanation_summary_matches_summary() -> None:
    """Explanation.summary and summary() are the same line."""
    for code in (1000, 1006, 1012, 4001, 2000):
        assert explain(code).summary == summary(code)
        assert explain(code, "ja").summary == summary(code, "ja")


def test_explanation_to_dict_has_the_documented_fields() -> None:
    """to_dict() has exactly the documented fields and is JSON-serialisable."""
    data = explain(1006).to_dict()
    assert set(data) == EXPLANATION_FIELDS
    assert data["policy"] == {"action": "reconnect", "delay": "backoff", "source": "1006"}
    assert json.loads(json.dumps(data)) == data


def test_final_decision_has_no_delay_in_dict() -> None:
    """A final rule reports delay null: there is no delay when tether stops."""
    assert explain(1008).to_dict()["policy"] == {
        "action": "final",
        "delay": None,
        "source": "1008",
    }


# --- compare ---------------------------------------------------------------------------------


def test_compare_keeps_both_explanations_in_order() -> None:
    """compare(a, b) carries explain(a) and explain(b)."""
    c = compare(1012, 1006)
    assert c.a == explain(1012)
    assert c.b == explain(1006)


def test_compare_1006_1012_lists_the_key_differences() -> None:
    """1006 vs 1012: pair note, wire, local report, default and failure counting."""
    text = "\n".join(compare(1006, 1012).differences)
    assert "announced, planned" in text
    assert "never sent in a Close frame" in text
    assert "only a server sends it" in text
    assert "reported locally" in text
    assert "reconnect after 1–5 s" in text
    assert "1006 counts as a failure" in text


def test_compare_guidance_has_one_line_per_code() -> None:
    """guidance says when to use or expect each code, prefixed with the code."""
    c = compare(1006, 1012)
    assert len(c.guidance) == 2
    assert c.guidance[0].startswith("1006: ")
    assert c.guidance[1].startswith("1012: ")


def test_compare_same_code_says_so() -> None:
    """Comparing a code with itself gives one honest line, not invented differences."""
    assert compare(1006, 1006).differences == (
        load_texts("en")["differences"]["same_code"].format(a=1006),
    )


def test_compare_codes_that_only_differ_in_meaning() -> None:
    """1002 vs 1003 share category, sender and default: the 'none' line says so."""
    assert compare(1002, 1003).differences == (load_texts("en")["differences"]["none"],)


def test_compare_codes_in_one_range_shows_the_policy_split() -> None:
    """4001 vs 4500: same range, but tether's default differs, and the comparison says so."""
    lines = compare(4001, 4500).differences
    assert "4000-4999" in lines[0]
    assert "4001: reconnect, backoff; 4500: final, no reconnect" in lines[1]


def test_compare_in_japanese_is_japanese() -> None:
    """The Japanese comparison's differences are written in Japanese."""
    differences = compare(1006, 1012, "ja").differences
    assert differences
    for line in differences:
        assert JAPANESE.search(line), line


def test_comparison_to_dict_has_the_documented_fields() -> None:
    """to_dict() has a, b, differences, guidance, lang."""
    data = compare(1006, 1012).to_dict()
    assert set(data) == {"a", "b", "differences", "guidance", "lang"}
    assert data["a"]["code"] == 1006
    assert data["b"]["code"] == 1012
    assert json.loads(json.dumps(data)) == data


# --- catalog ---------------------------------------------------------------------------------


def test_catalog_lists_the_registry_in_order() -> None:
    """catalog() has one row per registry entry, in registry order."""
    assert [row.key for row in catalog()] == KEYS


@pytest.mark.parametrize("info", REGISTRY, ids=KEYS)
def test_catalog_segments_cover_each_entry(info: Any) -> None:
    """The policy segments of a row are contiguous and cover the entry exactly."""
    row = next(r for r in catalog() if r.key == info.key)
    assert row.segments[0].low == info.low
    assert row.segments[-1].high == info.high
    for before, after in itertools.pairwise(row.segments):
        assert after.low == before.high + 1


def test_catalog_segments_agree_with_the_policy() -> None:
    """Every code of every segment gets the segment's decision from the policy."""
    policy = ReconnectPolicy()
    for row in catalog():
        for segment in row.segments:
            for code in range(segment.low, min(segment.high, 5000) + 1):
                assert policy.decide(code).rule == segment.decision.rule, code


def test_catalog_splits_the_private_range() -> None:
    """4000-4999 shows both halves of the policy: reconnect below 4500, final above."""
    row = next(r for r in catalog() if r.key == "4000-4999")
    assert [(s.low, s.high, s.decision.reconnect) for s in row.segments] == [
        (4000, 4499, True),
        (4500, 4999, False),
    ]
    assert row.tether_default == "4000-4499: reconnect, backoff; 4500-4999: final, no reconnect"


def test_docs_list_every_json_field() -> None:
    """docs/close-codes.md documents every field of every JSON shape."""
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "close-codes.md").read_text("utf-8")
    fields = (
        set(explain(1006).to_dict())
        | set(compare(1006, 1012).to_dict())
        | set(catalog()[0].to_dict())
        | set(catalog()[0].segments[0].to_dict())
    )
    for field in fields:
        assert f"`{field}`" in doc or f'"{field}"' in doc, field


# --- tether.v1's own codes ----------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_tether_code_has_a_text_and_nothing_else_does(lang: str) -> None:
    """One tether_codes entry per TetherCloseCode member, each field filled."""
    entries = load_texts(lang)["tether_codes"]
    assert set(entries) == {str(int(code)) for code in TetherCloseCode}
    for entry in entries.values():
        assert set(entry) == {"summary", "meaning", "action"}
        assert all(isinstance(text, str) and text.strip() for text in entry.values())
        if lang == "ja":
            assert all(JAPANESE.search(text) for text in entry.values())


@pytest.mark.parametrize("code", list(TetherCloseCode))
def test_a_tether_code_is_explained_as_tether_uses_it(code: TetherCloseCode) -> None:
    """explain() adds tether.v1's meaning to the range's text; summary() names it."""
    for lang in LANGUAGES:
        e = explain(int(code), lang)
        assert e.key == "4000-4999"  # the range's own text is kept
        assert e.tether_v1 is not None
        assert e.tether_v1.name == code.name
        assert f"tether.v1 {code.name}: " in e.summary
        assert e.summary == summary(int(code), lang)
        assert "\n" not in e.summary
        assert e.to_dict()["tether_v1"]["name"] == code.name


@pytest.mark.parametrize("code", [1006, 1012, 4000, 4200, 4205, 4900, 4902])
def test_other_codes_have_no_tether_meaning(code: int) -> None:
    """Only tether.v1's own numbers get the tether section; its neighbours do not."""
    e = explain(code)
    assert e.tether_v1 is None
    assert e.to_dict()["tether_v1"] is None
    assert "tether.v1" not in e.summary


def test_tether_code_texts_agree_with_what_tether_does() -> None:
    """4901 is final in the policy and its text says so; the 42xx texts say the client
    resumes (or, 4204, starts a new session), and the policy does reconnect them."""
    taken_over = explain(TetherCloseCode.TAKEN_OVER)
    assert taken_over.decision.rule.action is Action.FINAL
    assert taken_over.tether_v1 is not None
    assert "does not reconnect" in taken_over.tether_v1.action
    assert 'SessionLost("taken_over")' in taken_over.tether_v1.action
    for code in (4201, 4202, 4203, 4204):
        e = explain(code)
        assert e.decision.rule.action is Action.RECONNECT
        assert e.tether_v1 is not None
    superseded = explain(TetherCloseCode.SUPERSEDED).tether_v1
    assert superseded is not None
    assert 'SessionLost("superseded")' in superseded.action


@pytest.mark.parametrize("code", [[1000], {1000}, None, 1000.0, True])
def test_summary_refuses_what_is_not_a_code_before_its_cache(code: object) -> None:
    """The cache is behind the check: an unhashable or non-integer code is the documented
    ConfigurationError, not the cache's TypeError, and a bool is not taken as 1."""
    with pytest.raises(ConfigurationError):
        summary(code)  # type: ignore[arg-type]
