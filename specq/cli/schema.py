"""``specq schema``: every pipeline's result schema, as the Markdown of ``docs/results.md``."""
from __future__ import annotations


def add_parsers(sub, pipelines: dict) -> None:
    p = sub.add_parser("schema", help="print every pipeline's result schema (columns, units, flags)")
    p.set_defaults(func=cmd_schema)


def cmd_schema(args) -> int:
    from workers.registry import schemas
    from workers.schema import shared_markdown

    print(shared_markdown())
    for s in schemas().values():
        print(s.as_markdown())
    return 0
