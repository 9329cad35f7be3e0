"""`rollback-bot` / `python -m bot`: the commands CI and people run in a terminal."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bot import __version__
from bot.artifacts import ArtifactError, ArtifactStore, make_s3_client
from bot.config import ConfigError, Settings, load_settings
from bot.source import local_commit
from bot.stage_index import Artifact, RefError, StageIndex

EXIT_FAILED = 1
EXIT_CONFIG = 2


def age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_listing(index: StageIndex, limit: int, now: float) -> str:
    lines = []
    live = index.live
    head = f"{index.service} / {index.stage}: "
    head += f"live {live.commit[:7]} (build {live.build_id}) for {age(now - live.at)}" if live else "nothing live recorded"
    head += f", {len(index.artifacts)} build{'s' if len(index.artifacts) != 1 else ''}"
    lines.append(head)
    if index.freeze:
        f = index.freeze
        lines.append(f"FROZEN by {f.by or 'unknown'} {age(now - f.at)} ago: {f.reason}")
    if not index.artifacts:
        lines.append("No builds yet: CI publishes them with `rollback-bot publish`.")
        return "\n".join(lines)
    rows = [("", "SHA", "BUILD", "AGE", "AUTHOR", "MESSAGE")]
    for art in index.artifacts[:limit]:
        mark = "live" if index.is_live(art) else ("BAD" if art.bad else "")
        message = art.message
        if art.bad:
            message = f"[bad: {art.bad.reason} ({art.bad.by})] {message}"
        rows.append((mark, art.short, art.build_id, age(now - art.created), _clip(art.author, 18), _clip(message, 60)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
    if len(index.artifacts) > limit:
        lines.append(f"… {len(index.artifacts) - limit} older builds (--limit to see more)")
    return "\n".join(lines)


def artifact_json(index: StageIndex, art: Artifact) -> dict:
    doc = asdict(art)
    doc["live"] = index.is_live(art)
    return doc


# -- commands --------------------------------------------------------------------------------------


def _store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(
        make_s3_client(settings.s3_max_attempts), settings.bucket, settings.service, settings.prefix
    )


def cmd_publish(args, settings: Settings) -> int:
    commit = args.commit.strip()
    info = local_commit(commit)
    if info is not None:
        commit = info.sha  # a short SHA is fine inside the repository
    author = args.author if args.author is not None else (info.author if info else "")
    message = args.message if args.message is not None else (info.subject if info else "")
    result = _store(settings).publish(
        args.stage, commit, Path(args.package), build_id=args.build_id, author=author,
        message=message, deployed=args.deployed, by=args.by or settings.actor,
    )
    art = result.artifact
    verb = "published" if result.uploaded else "already published (unchanged)"
    print(f"{verb}: {args.stage} {art.label()} {art.size} bytes sha256 {art.sha256[:12]}…")
    if args.deployed:
        print(f"live on {args.stage}: {art.label()}" + ("" if result.went_live else " (already was)"))
    return 0


def cmd_mark_deployed(args, settings: Settings) -> int:
    info = local_commit(args.commit.strip())
    commit = info.sha if info else args.commit
    art, changed = _store(settings).mark_deployed(args.stage, commit, args.build_id, by=args.by or settings.actor)
    print(f"live on {args.stage}: {art.label()}" + ("" if changed else " (already was)"))
    return 0


def cmd_list(args, settings: Settings) -> int:
    index = _store(settings).read_index(args.stage)
    if args.json:
        json.dump(
            {
                "service": index.service,
                "stage": index.stage,
                "live": asdict(index.live) if index.live else None,
                "freeze": asdict(index.freeze) if index.freeze else None,
                "builds": [artifact_json(index, a) for a in index.artifacts[: args.limit]],
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print(render_listing(index, args.limit, time.time()))
    return 0


def cmd_show(args, settings: Settings) -> int:
    index = _store(settings).read_index(args.stage)
    art = index.resolve(args.ref)
    if args.json:
        json.dump(artifact_json(index, art), sys.stdout, indent=2)
        print()
    else:
        state = "live" if index.is_live(art) else ("marked bad" if art.bad else "not live")
        print(f"{args.stage} `{args.ref}` → {art.commit} build {art.build_id} ({state})")
        print(f"  {art.author}: {art.message}")
        print(f"  {art.size} bytes, sha256 {art.sha256}, s3://{settings.bucket}/{art.key}")
    return 0


def cmd_prune(args, settings: Settings) -> int:
    result = _store(settings).prune(args.stage, args.keep, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for art in result.removed:
        print(f"{verb} {art.label()}")
    for ident, why in result.protected.items():
        print(f"kept {ident[0][:7]} (build {ident[1]}): {why}")
    print(f"{verb} {len(result.removed)}, kept {len(result.kept)}")
    for key in result.failed_deletes:
        print(f"warning: s3://{settings.bucket}/{key} could not be deleted; remove it by hand", file=sys.stderr)
    return 0


def cmd_serve(args, settings: Settings) -> int:
    print(
        "rollback-bot serve: the Slack app is not part of this build yet (it lands with the Slack issue). "
        "Use the command line: rollback-bot --help",
        file=sys.stderr,
    )
    return EXIT_CONFIG


COMMANDS = {
    # name: (handler, what settings it needs)
    "publish": (cmd_publish, ("artifacts",)),
    "mark-deployed": (cmd_mark_deployed, ("artifacts",)),
    "list": (cmd_list, ("artifacts",)),
    "show": (cmd_show, ("artifacts",)),
    "prune": (cmd_prune, ("artifacts",)),
    "serve": (cmd_serve, ("artifacts", "slack")),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rollback-bot", description=__doc__)
    p.add_argument("--version", action="version", version=f"rollback-bot {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("publish", help="store a `serverless package` folder for a stage (run by CI)")
    s.add_argument("--stage", required=True)
    s.add_argument("--commit", required=True, help="the commit the package was built from")
    s.add_argument("--package", required=True, help="the folder given to `serverless package --package`")
    s.add_argument("--build-id", help="CI's build id (default: derived from the package's contents)")
    s.add_argument("--author", help="default: the commit's author, from git")
    s.add_argument("--message", help="default: the commit's subject, from git")
    s.add_argument("--deployed", action="store_true", help="also record it as live on the stage")
    s.add_argument("--by", help="who is publishing (default: CI's actor variable or $USER)")

    s = sub.add_parser("mark-deployed", help="record a published build as live (run by CI after deploy)")
    s.add_argument("--stage", required=True)
    s.add_argument("--commit", required=True)
    s.add_argument("--build-id", help="default: the newest build of that commit")
    s.add_argument("--by")

    s = sub.add_parser("list", help="a stage's builds, newest first")
    s.add_argument("stage")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("show", help="the build a ref names: SHA, SHA prefix, build id or `previous`")
    s.add_argument("stage")
    s.add_argument("ref")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("prune", help="delete old builds (never the live or last known-good one)")
    s.add_argument("--stage", required=True)
    s.add_argument("--keep", type=int, required=True, help="how many of the newest builds to keep")
    s.add_argument("--dry-run", action="store_true", help="only say what would be deleted")

    sub.add_parser("serve", help="run the Slack bot")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    handler, needs = COMMANDS[command]
    try:
        settings = load_settings(needs=needs)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        return handler(args, settings)
    except RefError as exc:
        print(f"rollback-bot: {exc}", file=sys.stderr)
        for art in exc.candidates:
            print(f"  {art.commit[:12]}  build {art.build_id}  {art.author}: {art.message}", file=sys.stderr)
        return EXIT_FAILED
    except ArtifactError as exc:
        print(f"rollback-bot: {exc}", file=sys.stderr)
        return EXIT_FAILED
