"""``tether compare CODE CODE``: two close codes on one reference page."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..knowledge import Comparison, compare, load_texts
from ._text import (
    Styler,
    add_common_options,
    close_code,
    display_width,
    output_width,
    print_json,
    wrap,
)
from .explain import category_line, may_send_line

__all__ = ["register", "render", "run"]


def register(subparsers: Any) -> None:
    """Add the ``compare`` subcommand."""
    parser = subparsers.add_parser(
        "compare",
        help="compare two close codes: meaning, causes, remedies, differences",
        description="Compare two WebSocket close codes side by side.",
    )
    parser.add_argument(
        "codes", metavar="CODE", type=close_code, nargs=2, help="two close codes, 0-65535"
    )
    add_common_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the comparison; exit status 0."""
    first, second = args.codes
    comparison = compare(first, second, args.lang)
    if args.json:
        print_json(comparison.to_dict())
    else:
        sys.stdout.write("\n".join(render(comparison, output_width(), Styler())) + "\n")
    return 0


def render(comparison: Comparison, width: int, style: Styler) -> list[str]:
    """The human-readable comparison page, as lines."""
    labels = load_texts(comparison.lang)["labels"]
    pair = (comparison.a, comparison.b)
    title = labels["compare_title"].format(
        a=f"{comparison.a.code} {comparison.a.title}", b=f"{comparison.b.code} {comparison.b.title}"
    )
    lines = [style.bold(title), "=" * min(width, display_width(title))]

    def section(label: str) -> None:
        lines.extend(["", style.bold(labels[label])])

    section("compare_description")
    for item in pair:
        lines += wrap(item.summary, width, indent="  ", subsequent="    ")
        lines += wrap(category_line(item), width, indent="    ")
        lines += wrap(may_send_line(item), width, indent="    ")
        lines += wrap(item.meaning, width, indent="    ")
        if item.tether_v1 is not None:
            use = item.tether_v1
            text = f"{labels['tether_v1']}: {use.name}: {use.meaning} {use.action}"
            lines += wrap(text, width, indent="    ")
    section("compare_appears")
    for item in pair:
        lines.append(f"  {item.code}")
        for cause in item.causes:
            lines += wrap(cause, width, indent="    - ", subsequent="      ")
    section("compare_resolve")
    for item in pair:
        lines.append(f"  {item.code}")
        lines += wrap(f"{labels['compare_client']}: {item.client_action}", width, indent="    ")
        lines += wrap(f"{labels['compare_server']}: {item.server_action}", width, indent="    ")
    section("compare_tether")
    for item in pair:
        lines += wrap(f"{item.code}: {item.tether_default}", width, indent="  ", subsequent="    ")
    section("differences")
    for line in comparison.differences:
        lines += wrap(line, width, indent="  - ", subsequent="    ")
    section("guidance")
    for line in comparison.guidance:
        lines += wrap(line, width, indent="  - ", subsequent="    ")
    return lines
