"""``specq weights``: install, list and verify the published weights."""
from __future__ import annotations

import sys

from specq.cli import checks


def add_parsers(sub, pipelines: dict) -> None:
    p = sub.add_parser("weights", help="install, list and verify the published weights")
    p.add_argument("--manifests", help="folder of <pipeline>.toml manifests (default: the weights/ folder of specq)")
    ws = p.add_subparsers(dest="weights_command", required=True)
    w = ws.add_parser("list", help="what is installed in SPECQ_WEIGHTS_DIR: published, unverified or demo, sha256")
    w.add_argument("--pipeline", choices=list(pipelines))
    w.set_defaults(func=cmd_weights)
    w = ws.add_parser("install", help="check weights against their manifest and copy them into SPECQ_WEIGHTS_DIR")
    w.add_argument("path", help="a ten-chunk folder, a .pt, or a clone of the published repository")
    w.add_argument("--pipeline", choices=list(pipelines), help="default: recognised from the files")
    w.add_argument("--allow-unpublished", action="store_true",
                   help="install complete weights that are not the published ones (your own), as unverified")
    w.set_defaults(func=cmd_weights)
    w = ws.add_parser("verify", help="read the installed weights again and check them; exit 1 on a mismatch")
    w.add_argument("--pipeline", choices=list(pipelines))
    w.set_defaults(func=cmd_weights)


def cmd_weights(args) -> int:
    from workers import registry
    from workers.engine import weights_candidates
    from workers.weights.formats import WeightsError
    from workers.weights.install import install
    from workers.weights.manifest import folder_problem
    from workers.weights.verify import render_survey, survey

    settings = checks.settings(weights_manifests=args.manifests)
    manifests = settings.weights_manifests
    problem = manifests and folder_problem(manifests)
    if problem:  # named as the user gave it, before any weights are read
        given = "--manifests" if args.manifests else settings.named("weights_manifests")
        raise checks.UsageError(f"{given} {manifests}: {problem}")
    folder = settings.weights_cache
    if args.weights_command == "install" and args.pipeline is None:
        # A clone of a published repository: every source found in it.
        from workers.weights.install import install_clone

        try:
            found, refused = install_clone(args.path, folder, manifests_dir=manifests,
                                           allow_unpublished=args.allow_unpublished)
        except WeightsError as exc:  # a manifest that cannot be read
            print(f"specq weights install: {exc}", file=sys.stderr)
            return 1
        for done in found:
            print(f"{done.pipeline}: installed {done.path} ({done.status}, sha256 {done.sha256})")
        for why in refused:
            print(f"specq weights install: {why}", file=sys.stderr)
        if found or refused:
            return 1 if refused else 0
    if args.weights_command == "install":
        try:
            done = install(args.path, folder, pipeline=args.pipeline, manifests_dir=manifests,
                           allow_unpublished=args.allow_unpublished)
        except (WeightsError, OSError) as exc:
            print(f"specq weights install: {exc}", file=sys.stderr)
            return 1
        for old in done.replaced:
            print(f"replaced {old}")
        print(f"{done.pipeline}: installed {done.path} ({done.status}, sha256 {done.sha256})")
        return 0
    names = [args.pipeline] if args.pipeline else registry.names()
    try:
        entries = survey(settings, {p: weights_candidates(p) for p in names})
    except WeightsError as exc:
        print(f"specq weights {args.weights_command}: {exc}", file=sys.stderr)
        return 1
    print(render_survey(entries, folder))
    # A MISMATCH is a failure for `list` as for `verify`: scripts see it in the exit status.
    return 1 if any(e.inspection is not None and e.inspection.problems for e in entries) else 0
