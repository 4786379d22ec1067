"""Close-code knowledge base, in English and Japanese (used by explain/compare and events).

The prose lives in one JSON file per language next to this module (``en.json``,
``ja.json``), keyed like :attr:`tether.closecodes.CodeInfo.key`: one entry per
registered code (1000-1015, 3000, 3003, 3008) and one per range (``"0-999"``,
``"1016-2999"``, ``"3000-3999"``, ``"4000-4999"``, ``"5000-65535"``). The texts say
what a code means, when it appears and what to do about it. Two things are *not*
written in the texts but computed, so that the prose can never contradict the code:

* whether a code may be sent, and by whom: from :func:`tether.closecodes.lookup`;
* what tether does by default: from ``ReconnectPolicy().decide(code)`` and the
  :class:`tether.backoff.BackoffConfig` defaults.

Public functions (the contract other modules rely on):

* :func:`explain` ``(code, lang="en") -> Explanation``: everything about one code or its range.
* :func:`summary` ``(code, lang="en") -> str``: one line, used by ``Disconnected.explanation``.
* :func:`compare` ``(a, b, lang="en") -> Comparison``: two codes side by side.
* :func:`catalog` ``(lang="en") -> tuple[CatalogEntry, ...]``: every registry entry, for tables.

The private codes tether.v1 itself sends (:class:`tether.protocol.TetherCloseCode`)
have, besides their range's entry, a ``tether_codes`` entry each: what the code
means between tether endpoints and what tether does about it. The range's text
stays, because another application may use the same number for something else.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from ..backoff import BackoffConfig
from ..closecodes import REGISTRY, Category, CodeInfo, Sender, lookup
from ..exceptions import ConfigurationError
from ..policy import Action, Decision, DelayRule, ReconnectPolicy
from ..protocol import TetherCloseCode

__all__ = [
    "LANGUAGES",
    "TEXT_FIELDS",
    "CatalogEntry",
    "Comparison",
    "Explanation",
    "PolicySegment",
    "TetherUse",
    "catalog",
    "check_lang",
    "compare",
    "explain",
    "load_texts",
    "summary",
]

#: Languages the knowledge base is written in; the first is the default.
LANGUAGES: tuple[str, ...] = ("en", "ja")

#: Fields every entry of every language file must fill (``causes`` is a list, the rest strings).
TEXT_FIELDS: tuple[str, ...] = (
    "summary",
    "meaning",
    "causes",
    "client_action",
    "server_action",
    "use_when",
)

# The defaults the texts describe: built once, never mutated. Reading them here
# (instead of writing "0.5 s" into the prose) keeps the docs and the behaviour equal.
_POLICY = ReconnectPolicy()
_BACKOFF = BackoffConfig()

# Codes reported locally because no Close frame was exchanged at all
# (RFC 6455 §7.1.5: 1006 when the connection closed without one; §7.4.1: 1015 for TLS).
_NO_CLOSE_FRAME = frozenset({1006, 1015})


def check_lang(lang: str) -> str:
    """``lang`` if the knowledge base is written in it, else ConfigurationError."""
    if lang not in LANGUAGES:
        raise ConfigurationError(
            f"unknown language {lang!r}; choose one of: {', '.join(LANGUAGES)}"
        )
    return lang


@functools.cache
def load_texts(lang: str = "en") -> dict[str, Any]:
    """Return the parsed language file for ``lang`` (cached; treat it as read-only).

    Raises:
        ConfigurationError: ``lang`` is not one of :data:`LANGUAGES`.
    """
    check_lang(lang)
    raw = resources.files(__name__).joinpath(f"{lang}.json").read_text(encoding="utf-8")
    texts: dict[str, Any] = json.loads(raw)
    return texts


def _number(value: float) -> str:
    """Format seconds the way the texts print them: ``0.5``, ``30``."""
    return f"{value:g}"


def _rule_key(decision: Decision) -> str:
    if decision.rule.action is Action.FINAL:
        return "final"
    return decision.rule.delay.value


def _rule_values(decision: Decision) -> dict[str, str]:
    low, high = _BACKOFF.restart_window
    return {
        "source": decision.source,
        "base": _number(_BACKOFF.base),
        "factor": _number(_BACKOFF.factor),
        "cap": _number(_BACKOFF.cap),
        "stability": _number(_BACKOFF.stability_period),
        "low": _number(low),
        "high": _number(high),
        "floor": _number(_BACKOFF.try_again_floor),
    }


def _default_text(decision: Decision, texts: dict[str, Any]) -> str:
    template: str = texts["rules"][_rule_key(decision)]
    return template.format(**_rule_values(decision))


def _default_short(decision: Decision, texts: dict[str, Any]) -> str:
    template: str = texts["rules_short"][_rule_key(decision)]
    return template.format(**_rule_values(decision))


def _decision_dict(decision: Decision) -> dict[str, Any]:
    reconnect = decision.rule.action is Action.RECONNECT
    return {
        "action": decision.rule.action.value,
        "delay": decision.rule.delay.value if reconnect else None,
        "source": decision.source,
    }


def _title(info: CodeInfo, entry: dict[str, Any], lang: str) -> str:
    # The registry name stays in English in every language (it is what logs and
    # specs use); a language may add a gloss after it.
    gloss = entry.get("gloss")
    if lang == "ja" and gloss:
        return f"{info.name}（{gloss}）"
    return info.name


def _one_line(label: int | str, info: CodeInfo, title: str, phrase: str) -> str:
    if info.is_range and str(label) != info.key:
        return f"{label} {title} ({info.key}): {phrase}"
    return f"{label} {title}: {phrase}"


@dataclass(frozen=True)
class TetherUse:
    """What tether.v1 means by one of the private codes it sends.

    Attributes:
        name: the :class:`~tether.protocol.TetherCloseCode` member, e.g. ``"SUPERSEDED"``.
        summary: one short phrase.
        meaning: what the code means between tether endpoints.
        action: what tether does about it, and what (if anything) to do by hand.
    """

    name: str
    summary: str
    meaning: str
    action: str

    def to_dict(self) -> dict[str, str]:
        """``{"name", "summary", "meaning", "action"}``."""
        return asdict(self)


_TETHER_CODES = {int(member): member for member in TetherCloseCode}


def _tether_use(code: int, texts: dict[str, Any]) -> TetherUse | None:
    member = _TETHER_CODES.get(code)
    if member is None:
        return None
    entry: dict[str, str] = texts["tether_codes"][str(code)]
    return TetherUse(member.name, entry["summary"], entry["meaning"], entry["action"])


def _summary_line(
    code: int, info: CodeInfo, title: str, entry: dict[str, Any], texts: dict[str, Any]
) -> str:
    use = _tether_use(code, texts)
    if use is None:
        return _one_line(code, info, title, entry["summary"])
    # Said as "tether.v1 NAME" so that a reader whose peer is not tether reads it as
    # tether's meaning, not as the meaning of the number.
    return _one_line(code, info, title, f"tether.v1 {use.name}: {use.summary}")


def _entry_dict(entry: Explanation | CatalogEntry) -> dict[str, Any]:
    """The JSON fields both shapes write alike, in their documented order (name .. summary)."""
    return {
        "name": entry.name,
        "title": entry.title,
        "category": entry.category.value,
        "may_send": entry.may_send,
        "sender": entry.sender.value,
        "registered": entry.registered,
        "summary": entry.summary,
    }


@dataclass(frozen=True)
class Explanation:
    """Everything tether knows about one close code, in one language.

    Attributes:
        code: the code asked about (for a code in a range, that code, not the range).
        key: the registry entry that explains it: ``"1006"`` or ``"4000-4999"``.
        name: the registered (English) name of the code or range.
        title: the name as shown to readers of ``lang`` (Japanese adds a gloss).
        category: where the code comes from.
        may_send: whether an endpoint may put it in a Close frame.
        sender: which side may send it (``NONE``: never on the wire).
        registered: True for a code registered individually (not a range).
        summary: one line: number, title and a short description.
        meaning: what the code means.
        causes: typical situations in which it is seen.
        client_action: what a client should do about it.
        server_action: what a server should do about it.
        use_when: when to send it, or when to expect it.
        tether_default: what tether's default reconnect policy does, in prose.
        decision: the default policy's decision the prose was computed from.
        lang: the language of the texts.
        tether_v1: for a code tether.v1 sends (4201-4204, 4901), what it means there;
            None for every other code.
    """

    code: int
    key: str
    name: str
    title: str
    category: Category
    may_send: bool
    sender: Sender
    registered: bool
    summary: str
    meaning: str
    causes: tuple[str, ...]
    client_action: str
    server_action: str
    use_when: str
    tether_default: str
    decision: Decision
    lang: str
    tether_v1: TetherUse | None = None

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON shape (see docs/close-codes.md)."""
        return {
            "code": self.code,
            "key": self.key,
            **_entry_dict(self),
            "meaning": self.meaning,
            "causes": list(self.causes),
            "client_action": self.client_action,
            "server_action": self.server_action,
            "use_when": self.use_when,
            "tether_default": self.tether_default,
            "policy": _decision_dict(self.decision),
            "lang": self.lang,
            "tether_v1": None if self.tether_v1 is None else self.tether_v1.to_dict(),
        }


def explain(code: int, lang: str = "en") -> Explanation:
    """Explain ``code``: its own entry, or its range's (the code itself is kept).

    Args:
        code: a close code, 0-65535.
        lang: one of :data:`LANGUAGES`.

    Raises:
        ConfigurationError: ``code`` is not an integer in 0-65535, or ``lang`` is unknown.
    """
    texts = load_texts(lang)
    info = lookup(code)
    entry: dict[str, Any] = texts["entries"][info.key]
    title = _title(info, entry, lang)
    decision = _POLICY.decide(code)
    return Explanation(
        code=code,
        key=info.key,
        name=info.name,
        title=title,
        category=info.category,
        may_send=info.may_send,
        sender=info.sender,
        registered=info.registered,
        summary=_summary_line(code, info, title, entry, texts),
        meaning=entry["meaning"],
        causes=tuple(entry["causes"]),
        client_action=entry["client_action"],
        server_action=entry["server_action"],
        use_when=entry["use_when"],
        tether_default=_default_text(decision, texts),
        decision=decision,
        lang=lang,
        tether_v1=_tether_use(code, texts),
    )


def summary(code: int, lang: str = "en") -> str:
    """One line about ``code``, e.g. ``"1006 Abnormal Closure: the connection dropped ..."``.

    Raises:
        ConfigurationError: ``code`` is not an integer in 0-65535, or ``lang`` is unknown.
    """
    lookup(code)  # validated before the cache sees it (a list is not hashable, say)
    check_lang(lang)
    return _summary(code, lang)


# Every closed connection's exception and event carries its summary: cached, since a
# restart closes thousands at once with the same few codes. (summary() validated the
# arguments; typed=True all the same, so that no two kinds of key ever share an entry.)
@functools.lru_cache(maxsize=256, typed=True)
def _summary(code: int, lang: str) -> str:
    texts = load_texts(lang)
    info = lookup(code)
    entry = texts["entries"][info.key]
    return _summary_line(code, info, _title(info, entry, lang), entry, texts)


@dataclass(frozen=True)
class Comparison:
    """Two codes side by side.

    Attributes:
        a: the first code's explanation.
        b: the second code's explanation.
        differences: the key differences, most telling first.
        guidance: when to use (or expect) each code, one line per code.
        lang: the language of the texts.
    """

    a: Explanation
    b: Explanation
    differences: tuple[str, ...]
    guidance: tuple[str, ...]
    lang: str

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON shape (see docs/close-codes.md)."""
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "differences": list(self.differences),
            "guidance": list(self.guidance),
            "lang": self.lang,
        }


def _is_planned(decision: Decision) -> bool:
    return decision.reconnect and decision.rule.delay is DelayRule.RESTART


def _differences(a: Explanation, b: Explanation, texts: dict[str, Any]) -> list[str]:
    templates: dict[str, str] = texts["differences"]
    if a.code == b.code:
        return [templates["same_code"].format(a=a.code)]
    lines: list[str] = []
    low, high = sorted((a.code, b.code))
    pair = texts["pairs"].get(f"{low}|{high}")
    if pair:
        lines.append(pair)
    if a.key == b.key:
        # Same range entry: category and sender are equal; only the policy may differ.
        lines.append(templates["same_entry"].format(key=a.key))
    structural = len(lines)
    if a.category is not b.category:
        labels = texts["categories"]
        lines.append(
            templates["category"].format(
                a=a.code, b=b.code, cat_a=labels[a.category.value], cat_b=labels[b.category.value]
            )
        )
    if a.sender is not b.sender:
        labels = texts["senders"]
        lines.append(
            templates["sender"].format(
                a=a.code, b=b.code, sender_a=labels[a.sender.value], sender_b=labels[b.sender.value]
            )
        )
    for local, sent in ((a, b), (b, a)):
        if local.code in _NO_CLOSE_FRAME and sent.may_send:
            lines.append(templates["clean"].format(local=local.code, sent=sent.code))
    if a.decision.rule != b.decision.rule:
        lines.append(
            templates["default"].format(
                a=a.code,
                b=b.code,
                short_a=_default_short(a.decision, texts),
                short_b=_default_short(b.decision, texts),
            )
        )
        for planned, counted in ((a, b), (b, a)):
            counts = counted.decision.reconnect and not _is_planned(counted.decision)
            if _is_planned(planned.decision) and counts:
                lines.append(
                    templates["failure"].format(planned=planned.code, counted=counted.code)
                )
    if len(lines) == structural and a.key != b.key:
        lines.append(templates["none"])
    return lines


def compare(a: int, b: int, lang: str = "en") -> Comparison:
    """Compare two close codes: both explanations, the key differences, which to use when.

    Raises:
        ConfigurationError: a code is not an integer in 0-65535, or ``lang`` is unknown.
    """
    first = explain(a, lang)
    second = explain(b, lang)
    texts = load_texts(lang)
    return Comparison(
        a=first,
        b=second,
        differences=tuple(_differences(first, second, texts)),
        guidance=(f"{first.code}: {first.use_when}", f"{second.code}: {second.use_when}"),
        lang=lang,
    )


@dataclass(frozen=True)
class PolicySegment:
    """Part of a registry entry over which the default policy decides the same way.

    Attributes:
        low: first code of the segment.
        high: last code of the segment.
        decision: the default policy's decision for every code of the segment.
    """

    low: int
    high: int
    decision: Decision

    def to_dict(self) -> dict[str, Any]:
        """``{"low", "high", "action", "delay", "source"}``."""
        return {"low": self.low, "high": self.high, **_decision_dict(self.decision)}


def _segments(info: CodeInfo, policy: ReconnectPolicy) -> tuple[PolicySegment, ...]:
    # Within a registry range the decision can only change where a policy key
    # starts or ends, so deciding once per stretch between those edges is exact.
    edges = {info.low, info.high + 1}
    for key, _rule in policy.rows():
        first, _, last = key.partition("-")
        start, end = int(first), int(last or first)
        for edge in (start, end + 1):
            if info.low < edge <= info.high:
                edges.add(edge)
    ordered = sorted(edges)
    segments: list[PolicySegment] = []
    for start, stop in itertools.pairwise(ordered):
        decision = policy.decide(start)
        if segments and segments[-1].decision.rule == decision.rule:
            previous = segments[-1]
            if previous.decision.source == decision.source:
                segments[-1] = PolicySegment(previous.low, stop - 1, previous.decision)
                continue
        segments.append(PolicySegment(start, stop - 1, decision))
    return tuple(segments)


@dataclass(frozen=True)
class CatalogEntry:
    """One row of the close-code table (``tether codes``).

    Attributes:
        key: ``"1006"`` or ``"4000-4999"``.
        low: first code covered.
        high: last code covered.
        name: the registered (English) name.
        title: the name as shown to readers of the language.
        category: where the code comes from.
        may_send: whether an endpoint may put it in a Close frame.
        sender: which side may send it.
        registered: True for a code registered individually.
        summary: one line: key, title and a short description.
        tether_default: tether's default, short; per policy segment for a range.
        segments: the default policy over the entry, split where it changes.
    """

    key: str
    low: int
    high: int
    name: str
    title: str
    category: Category
    may_send: bool
    sender: Sender
    registered: bool
    summary: str
    tether_default: str
    segments: tuple[PolicySegment, ...]

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON shape (see docs/close-codes.md)."""
        return {
            "key": self.key,
            "low": self.low,
            "high": self.high,
            **_entry_dict(self),
            "tether_default": self.tether_default,
            "policy": [segment.to_dict() for segment in self.segments],
        }


def catalog(lang: str = "en") -> tuple[CatalogEntry, ...]:
    """Every registry entry (codes first, then ranges) with its short texts.

    Raises:
        ConfigurationError: ``lang`` is unknown.
    """
    texts = load_texts(lang)
    rows: list[CatalogEntry] = []
    for info in REGISTRY:
        entry = texts["entries"][info.key]
        title = _title(info, entry, lang)
        segments = _segments(info, _POLICY)
        if len(segments) == 1:
            default = _default_short(segments[0].decision, texts)
        else:
            default = "; ".join(
                f"{s.low}-{s.high}: {_default_short(s.decision, texts)}" for s in segments
            )
        rows.append(
            CatalogEntry(
                key=info.key,
                low=info.low,
                high=info.high,
                name=info.name,
                title=title,
                category=info.category,
                may_send=info.may_send,
                sender=info.sender,
                registered=info.registered,
                summary=_one_line(info.key, info, title, entry["summary"]),
                tether_default=default,
                segments=segments,
            )
        )
    return tuple(rows)
