"""``specq schema``: the result schemas, as the Markdown of ``docs/results.md`` or as JSON, and
what a ``result_flags`` value means."""
from __future__ import annotations

import json

from specq.cli import checks
from specq.cli.checks import UsageError


def add_parsers(sub, pipelines: dict) -> None:
    p = sub.add_parser("schema", help="print the result schemas (columns, units, flags), or decode result_flags")
    p.add_argument("--pipeline", help=f"one of {', '.join(pipelines)}, several comma-separated, or all "
                                      f"(default: all)")
    p.add_argument("--json", action="store_true", help="print the schemas as one JSON object")
    p.add_argument("--flags", metavar="VALUE",
                   help="instead: the flag bits set in this result_flags value (decimal, or 0x… hexadecimal), "
                        "and whether they make the row warn or bad, for each pipeline chosen")
    p.set_defaults(func=cmd_schema)


def _flags_value(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"schema --flags: not a whole number: {text!r}") from None
    if not 0 <= value < 2**63:
        raise UsageError(f"schema --flags: result_flags lies in 0 to 2**63 - 1, got {text}")
    return value


def decoded(schema, value: int) -> dict:
    """What ``value`` means as one pipeline's ``result_flags``: its bits' names and the summary flags."""
    warn, bad = schema.summary(value)
    return {"pipeline": schema.pipeline, "result_flags": value, "flags": schema.decode(value),
            "undeclared_bits": schema.undeclared_bits(value), "flag_warn": bool(warn), "flag_bad": bool(bad)}


def _decoded_line(d: dict) -> str:
    names = ", ".join(d["flags"]) or "no flag"
    if d["undeclared_bits"]:
        bits = d["undeclared_bits"]
        names += (f"; {'bit' if len(bits) == 1 else 'bits'} {', '.join(map(str, bits))} "
                  f"declared by no flag of {d['pipeline']}")
    verdict = "bad" if d["flag_bad"] else "warn" if d["flag_warn"] else "good"
    return f"{d['pipeline']}: {d['result_flags']} = {names} ({verdict})"


def cmd_schema(args) -> int:
    from workers.registry import schemas
    from workers.schema import SHARED_GROUPS, field_dict, shared_markdown

    names, _ = checks.chosen_pipelines(args.pipeline)
    chosen = [schemas()[n] for n in names]
    if args.flags is not None:
        value = _flags_value(args.flags)
        found = [decoded(s, value) for s in chosen]
        print(json.dumps(found, indent=2) if args.json else "\n".join(_decoded_line(d) for d in found))
        return 0
    if args.json:
        shared = {group: [field_dict(f) for f in fields] for group, fields in SHARED_GROUPS}
        print(json.dumps({"shared": shared, "pipelines": {s.pipeline: s.as_dict() for s in chosen}}, indent=2))
        return 0
    print(shared_markdown())
    for s in chosen:
        print(s.as_markdown())
    return 0
