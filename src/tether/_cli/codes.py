"""``tether codes``: the table of every registered close code and range."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..knowledge import CatalogEntry, catalog, load_texts
from ._text import Styler, add_common_options, display_width, pad, print_json

__all__ = ["register", "render", "run"]


def register(subparsers: Any) -> None:
    """Add the ``codes`` subcommand."""
    parser = subparsers.add_parser(
        "codes",
        help="table of every close code and range: who may send it, what tether does",
        description="List the registered WebSocket close codes and ranges.",
    )
    add_common_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the table; exit status 0."""
    rows = catalog(args.lang)
    if args.json:
        print_json({"lang": args.lang, "codes": [row.to_dict() for row in rows]})
    else:
        sys.stdout.write("\n".join(render(rows, args.lang, Styler())) + "\n")
    return 0


def render(rows: tuple[CatalogEntry, ...], lang: str, style: Styler) -> list[str]:
    """The table as lines: code, name, category, may send, sender, tether default."""
    texts = load_texts(lang)
    labels = texts["labels"]
    header = [
        labels["code"],
        labels["name"],
        labels["category"],
        labels["may_send"],
        labels["sender"],
        labels["tether_default"],
    ]
    table = [
        [
            row.key,
            row.title,
            texts["categories_short"][row.category.value],
            labels["yes"] if row.may_send else labels["no"],
            texts["senders_short"][row.sender.value],
            row.tether_default,
        ]
        for row in rows
    ]
    widths = [max(display_width(line[i]) for line in [header, *table]) for i in range(5)]

    def line(cells: list[str]) -> str:
        return "  ".join([*(pad(cells[i], widths[i]) for i in range(5)), cells[5]])

    return [
        style.bold(labels["codes_title"]),
        "",
        style.bold(line(header)),
        *(line(cells) for cells in table),
        "",
        labels["codes_footer"],
    ]
