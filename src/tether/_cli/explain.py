"""``tether explain CODE``: what one close code means and what to do about it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..knowledge import Explanation, explain, load_texts
from ._text import Styler, add_common_options, close_code, output_width, print_json, wrap

__all__ = ["category_line", "may_send_line", "register", "render", "run"]


def register(subparsers: Any) -> None:
    """Add the ``explain`` subcommand."""
    parser = subparsers.add_parser(
        "explain",
        help="explain one close code: meaning, causes, remedies, tether's default",
        description="Explain a WebSocket close code (a code in a range is explained by its range).",
    )
    parser.add_argument("code", metavar="CODE", type=close_code, help="close code, 0-65535")
    add_common_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the explanation; exit status 0."""
    explanation = explain(args.code, args.lang)
    if args.json:
        print_json(explanation.to_dict())
    else:
        sys.stdout.write("\n".join(render(explanation, output_width(), Styler())) + "\n")
    return 0


def may_send_line(explanation: Explanation) -> str:
    """``May be sent: no (never sent in a Close frame)`` in the explanation's language."""
    texts = load_texts(explanation.lang)
    labels = texts["labels"]
    answer = labels["yes"] if explanation.may_send else labels["no"]
    sender = texts["senders"][explanation.sender.value]
    template: str = labels["may_send_line"]
    return template.format(label=labels["may_send"], answer=answer, sender=sender)


def category_line(explanation: Explanation) -> str:
    """``Category: reserved (...)`` in the explanation's language."""
    texts = load_texts(explanation.lang)
    category = texts["categories"][explanation.category.value]
    return f"{texts['labels']['category']}: {category}"


def render(explanation: Explanation, width: int, style: Styler) -> list[str]:
    """The human-readable page for one code, as lines."""
    labels = load_texts(explanation.lang)["labels"]
    lines = [*wrap(explanation.summary, width, subsequent="  ")]
    lines = [style.bold(lines[0]), *lines[1:]]
    lines += wrap(category_line(explanation), width, subsequent="  ")
    lines += wrap(may_send_line(explanation), width, subsequent="  ")
    sections: list[tuple[str, str | tuple[str, ...]]] = [("meaning", explanation.meaning)]
    use = explanation.tether_v1
    if use is not None:
        sections.append(("tether_v1", (f"{use.name}: {use.meaning}", use.action)))
    sections += [
        ("causes", explanation.causes),
        ("client_action", explanation.client_action),
        ("server_action", explanation.server_action),
        ("tether_default", explanation.tether_default),
        ("use_when", explanation.use_when),
    ]
    for label, body in sections:
        lines += ["", style.bold(labels[label])]
        if isinstance(body, tuple):
            for item in body:
                lines += wrap(item, width, indent="  - ", subsequent="    ")
        else:
            lines += wrap(body, width, indent="  ")
    return lines
