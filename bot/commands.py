"""The commands CI and people run in a terminal: each parses its arguments, calls the rollback
service and prints what it returns.

The composition root (bot/cli.py) reads the settings and calls these; the demo calls ``run`` with its
own settings, so nothing has to pass through the process environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bot import __version__
from bot.adapters.artifacts import validate_stage
from bot.adapters.source import local_commit
from bot.core.actor import terminal_operator
from bot.core.catalog import UnknownService
from bot.core.config import Settings
from bot.core.errors import UserError
from bot.core.jobs import APP, Job, JobState
from bot.core.masking import Masker
from bot.core.stage_index import RefError
from bot.engine.build import artifact_store, build_fleet
from bot.engine.service import RollbackService
from bot.terminal import (
    ProgressPrinter,
    artifact_json,
    clean,
    render_app_plan,
    render_history,
    render_listing,
    render_plan,
    render_status,
)

DESCRIPTION = """Roll a Serverless Framework service back to an earlier build, the right way.

CI publishes every package (publish, mark-deployed) and asks before deploying (check-freeze); people
roll back from Slack (serve) or, when Slack is down, from here (rollback, cancel, unfreeze)."""
EXIT_FAILED = 1
EXIT_CONFIG = 2


# -- commands --------------------------------------------------------------------------------------


def cmd_publish(args, settings: Settings) -> int:
    commit = args.commit.strip()
    info = local_commit(commit)
    if info is not None:
        commit = info.sha  # a short SHA is fine inside the repository
    author = args.author if args.author is not None else (info.author if info else "")
    message = args.message if args.message is not None else (info.subject if info else "")
    settings = _one(settings, args)
    result = artifact_store(settings).publish(
        args.stage, commit, Path(args.package), build_id=args.build_id, author=author,
        message=message, deployed=args.deployed, by=args.by or settings.actor,
    )
    art = result.artifact
    verb = "published" if result.uploaded else "already published (unchanged)"
    print(f"{verb}: {args.stage} {art.label()} {art.size} bytes sha256 {art.sha256[:12]}…")
    if args.deployed:
        print(f"live on {args.stage}: {art.label()}" + ("" if result.went_live else " (already was)"))
        if result.went_live:
            _notify(settings, args.stage, args.by or settings.actor)
    return 0


def _notify(settings: Settings, stage: str, by: str) -> None:
    if not settings.slack_bot_token:
        return
    from bot.slack.notify import notify_deployed  # Slack is optional for CI commands

    notify_deployed(settings, artifact_store(settings), stage, by,
                    settings.service if len(settings.catalog.services) > 1 else "")


def cmd_mark_deployed(args, settings: Settings) -> int:
    info = local_commit(args.commit.strip())
    commit = info.sha if info else args.commit
    who = args.by or settings.actor
    settings = _one(settings, args)
    art, changed = artifact_store(settings).mark_deployed(args.stage, commit, args.build_id, by=who)
    print(f"live on {args.stage}: {art.label()}" + ("" if changed else " (already was)"))
    if changed:
        _notify(settings, args.stage, who)
    return 0


def cmd_list(args, settings: Settings) -> int:
    service = _service(settings)
    index = service.builds(service.key(args.stage, args.service))
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
    service = _service(settings)
    index, art = service.show(service.key(args.stage, args.service), args.ref)
    if args.json:
        json.dump(artifact_json(index, art), sys.stdout, indent=2)
        print()
    else:
        state = "live" if index.is_live(art) else ("marked bad" if art.bad else "not live")
        print(clean(f"{args.stage} `{args.ref}` → {art.commit} build {art.build_id} ({state})"))
        print(clean(f"  {art.author}: {art.message}"))
        if art.bad:
            print(clean(f"  marked bad by {art.bad.by}: {art.bad.reason}"))
        print(f"  {art.size} bytes, sha256 {art.sha256}, s3://{settings.bucket}/{art.key}")
    return 0


def cmd_prune(args, settings: Settings) -> int:
    settings = _one(settings, args)
    result = artifact_store(settings).prune(args.stage, args.keep, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for art in result.removed:
        print(f"{verb} {art.label()}")
    for ident, why in result.protected.items():
        print(f"kept {ident[0][:7]} (build {ident[1]}): {why}")
    print(f"{verb} {len(result.removed)}, kept {len(result.kept)}")
    for key in result.failed_deletes:
        print(f"warning: s3://{settings.bucket}/{key} could not be deleted; remove it by hand", file=sys.stderr)
    return 0


def _operator(args, settings: Settings) -> str:
    """Who runs a command that the policy checks: never a Slack user (a terminal cannot prove it is one)."""
    return terminal_operator(args.by or settings.actor)


def _service(settings: Settings) -> RollbackService:
    return RollbackService(build_fleet(settings), settings.policy)


def _one(settings: Settings, args) -> Settings:
    """The settings of the service a command names (--service, ROLLBACK_SERVICE, or the only one)."""
    if not settings.catalog.services:
        return settings
    try:
        return settings.for_service(settings.catalog.resolve(getattr(args, "service", None) or None))
    except UnknownService as exc:
        raise UserError(f"{exc} Pass --service NAME.") from None


def cmd_rollback(args, settings: Settings) -> int:
    service = _service(settings)
    if service.several and not args.service:  # no service named: the whole app back to one commit
        return _rollback_app(args, service)
    key = service.key(args.stage, args.service)
    engine = service.fleet.engine(key.service)
    engine.jobs.recover()
    if service.several:  # an app rollback a crash cut short holds nothing any more, and says so
        service.apps.recover()
    who = _operator(args, settings)
    plan = service.plan_for_terminal(key, args.ref, who)
    where = plan.where  # "api in prod" on a bot of several services
    flag = f"--service {key.service} " if service.several else ""
    print(render_plan(plan, time.time()))
    if plan.account:
        print(f"  AWS: {plan.account}")
    if not args.yes:
        if not sys.stdin.isatty():
            print("rollback-bot: not a terminal, so nothing to confirm with; pass --yes to go ahead", file=sys.stderr)
            return EXIT_FAILED
        if input(f"Deploy this to {where}? Type the stage name to confirm: ").strip() != args.stage:
            print("Nothing was done.")
            return EXIT_FAILED
    job_id = service.start_from_terminal(plan, who, args.ref, args.unfreeze)
    engine.jobs.subscribe(job_id, ProgressPrinter(job_id, show_output=not args.quiet))
    print(f"job {job_id} started")
    try:
        job = engine.jobs.wait(job_id)
    except KeyboardInterrupt:
        print("\ncancelling: stopping the job's processes…", file=sys.stderr)
        engine.jobs.cancel(job_id, who)
        job = engine.jobs.wait(job_id)
    took = job["finished"] - job["started"]
    if job["state"] == "succeeded" and job.get("recorded") == 0:
        print(f"job {job_id} SUCCEEDED, CI NOT FROZEN: {where} runs {plan.target.label()} (verified), but "
              "index.json could not be updated, so CI may deploy over it and nothing is marked bad. Retrying for "
              f"up to {RECORD_WAIT:.0f}s…", file=sys.stderr)
        job = _wait_recorded(engine, job_id, RECORD_WAIT)
        if job.get("recorded") != 1:
            engine.shutdown()
            print(f"index.json is still not updated. Start `rollback-bot serve` with this data dir (it keeps "
                  f"retrying), or freeze CI by hand; then check `rollback-bot list {flag}{args.stage}`.",
                  file=sys.stderr)
            return 0
        print(f"index.json updated after retrying: {job['reason']}", file=sys.stderr)
    engine.shutdown()
    if job["state"] == "succeeded":
        if plan.forward:
            lifted = "; the CI freeze was lifted" if args.unfreeze else ""
            print(f"job {job_id} succeeded in {took:.1f}s: rolled forward, {where} runs {plan.target.label()}"
                  f"; nothing marked bad{lifted}")
            return 0
        print(f"job {job_id} succeeded in {took:.1f}s: {where} runs {plan.target.label()}; CI is frozen "
              f"on {where} until `rollback-bot unfreeze {flag}{args.stage}`")
        return 0
    print(clean(f"job {job_id} {job['state']} after {took:.1f}s: {job['reason']}"), file=sys.stderr)
    tail = engine.store.log_tail(job_id, 20)
    if tail:
        print(clean("last lines of the log:\n  " + "\n  ".join(tail)), file=sys.stderr)
    return EXIT_FAILED


RECORD_WAIT = 120.0


def _rollback_app(args, service: RollbackService) -> int:
    """Every service of the stage to its newest build at or before the commit, as in Slack."""
    for engine in service.fleet.engines.values():
        engine.jobs.recover()
    service.apps.recover()
    who = terminal_operator(args.by or service.fleet.settings.actor)
    pending = service.apps.request(args.stage, args.ref, who, None)
    shown = json.loads(service.store.job(pending.job_id)["plan_json"])
    print(render_app_plan(shown, args.stage))
    for busy in pending.busy:
        print(f"  busy: {busy}")
    if not args.yes:
        if not sys.stdin.isatty():
            service.withdraw(pending.job_id, who)
            print("rollback-bot: not a terminal, so nothing to confirm with; pass --yes to go ahead", file=sys.stderr)
            return EXIT_FAILED
        if input(f"Deploy this to {args.stage}? Type the stage name to confirm: ").strip() != args.stage:
            service.withdraw(pending.job_id, who)
            print("Nothing was done.")
            return EXIT_FAILED
    try:
        app_id = service.apps.start_from_terminal(pending, who)
    except UserError:
        with contextlib.suppress(UserError):  # refused before anything ran: the plan is not left waiting
            service.withdraw(pending.job_id, who)
        raise
    print(f"app job {app_id} started")
    said: dict[int, str] = {}
    try:
        while (job := service.store.job(app_id))["state"] == "running":
            _say_parts(service, app_id, said)
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\ncancelling: no further phase starts; stopping the running services…", file=sys.stderr)
        service.apps.cancel(app_id, who)
        job = service.apps.wait(app_id)
    service.apps.wait(app_id)
    _say_parts(service, app_id, said)
    job = service.store.job(app_id)
    service.fleet.shutdown()
    if job["state"] == "succeeded" and not job.get("reason"):
        print(f"app job {app_id} succeeded: every service runs its target; CI is frozen on the services that moved")
        return 0
    print(clean(f"app job {app_id} {job['state']}: {job['reason']}"), file=sys.stderr)
    return 0 if job["state"] == "succeeded" else EXIT_FAILED


def _say_parts(service: RollbackService, app_id: int, said: dict[int, str]) -> None:
    for part in service.apps.parts(app_id):
        # approved with the app; "approving" is how a service waits for its phase
        state = "waiting for its phase" if part.state == JobState.APPROVING else str(part.state)
        if said.get(part.id) != state:
            said[part.id] = state
            took = f" in {part.duration:.1f}s" if part.finished and part.duration is not None else ""
            print(clean(f"  [{part.service}] {state}{took}" + (f": {part.reason}" if part.reason else "")))


def _wait_recorded(engine, job_id: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    job = engine.store.job(job_id)
    while job.get("recorded") == 0 and time.monotonic() < deadline:
        time.sleep(1)
        job = engine.store.job(job_id)
    return job


def cmd_check_freeze(args, settings: Settings) -> int:
    """For CI: may this stage be deployed (with this commit)? Needs only read access to the bucket."""
    service = _service(settings)
    check = service.check_freeze(service.key(args.stage, args.service), args.commit or "")
    for p in check.problems:
        print(clean(f"rollback-bot: {p}"), file=sys.stderr)
    if not check.problems and (hint := service.stage_hint(service.key(args.stage, args.service))):
        print(clean(f"rollback-bot: warning: {hint}"), file=sys.stderr)  # a typo would check nothing
    if not check.problems:
        print(f"{args.stage}: not frozen" + (f", {args.commit[:12]} not marked bad" if args.commit else ""))
    return EXIT_FAILED if check.problems else 0


def cmd_unfreeze(args, settings: Settings) -> int:
    """The policy decides, as in Slack: the operator (--by, ROLLBACK_ACTOR) must be one of the stage's approvers."""
    service = _service(settings)
    was = service.unfreeze(service.key(args.stage, args.service), _operator(args, settings), channel=None)
    print(clean(f"{args.stage}: unfrozen (was: {was})" if was else f"{args.stage}: was not frozen"))
    return 0


CANCEL_WAIT = 60.0  # seconds the terminal waits for a cancelled job to end (SIGKILL comes after 5)


def cmd_cancel(args, settings: Settings) -> int:
    """Stop a running rollback on this machine, whichever process runs it: the Slack bot's, or another
    terminal's. The policy decides, as for the Cancel button: the requester, the approver or an approver."""
    service = _service(settings)
    who = _operator(args, settings)
    stage = validate_stage(args.stage)
    before = [j["id"] for j in service.store.jobs(stage=stage, states=["running"], limit=200, app_parts=False)]
    if service.several and not args.service:  # the app rollback running in the stage, or the only one
        said = service.cancel_in_stage(stage, who, None)
    else:
        said = service.cancel_running(service.key(stage, args.service), who, None)
    print(clean(said))
    deadline = time.monotonic() + CANCEL_WAIT
    while True:  # until the job it cancelled (or found dead) has ended
        jobs = [j for j in map(service.store.job, before) if j["state"] != "running" or j.get("cancelled_by") == who]
        if all(j["state"] != "running" for j in jobs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for job in jobs:
        what = "app job" if job["service"] == APP else "job"
        if job["state"] == "running":
            print(f"{what} {job['id']} is still stopping after {CANCEL_WAIT:.0f}s; see `rollback-bot history "
                  f"{stage}` and the bot's log", file=sys.stderr)
            return EXIT_FAILED
        print(clean(f"{what} {job['id']} {job['state']}: {job['reason']}"))
    return 0


def cmd_status(args, settings: Settings) -> int:
    """What runs now on this machine, by which process, and which stages are frozen: `/rollback status`
    for when Slack is down."""
    service = _service(settings)
    status = service.status()
    shown = [j for j in status.running if not j.app_id]  # an app's services are shown under it
    parts = {j.id: service.apps.parts(j.id) for j in shown if j.is_app}
    name = _people(settings, service).name
    if args.json:
        json.dump({"running": [{**job_json(j, name), "pid": j.pid, "host": j.host,
                                **({"services": [job_json(p, name) for p in parts[j.id]]} if j.is_app else {})}
                               for j in shown],
                   "frozen": [{"service": k.service, "stage": k.stage, "by": m.by, "reason": m.reason,
                               "since": _iso(m.at)} for k, m in status.freezes.items()]}, sys.stdout, indent=2)
        print()
    else:
        print(render_status(shown, status.freezes, time.time(), name, parts))
    return 0


def cmd_history(args, settings: Settings) -> int:
    service = _service(settings)
    key = service.key(args.stage, args.service) if args.service or not service.several else None
    jobs = service.history_of(args.stage, key, _operator(args, settings), None, args.limit)
    parts = {j.id: service.apps.parts(j.id) for j in jobs if j.is_app}  # an app rollback is one entry
    name = _people(settings, service).name
    if args.json:
        json.dump([{**job_json(j, name), **({"services": [job_json(p, name) for p in parts[j.id]]}
                                            if j.is_app else {})} for j in jobs], sys.stdout, indent=2)
        print()
    else:
        print(render_history(jobs, time.time(), name, parts))
    return 0


def _people(settings: Settings, service: RollbackService):
    """Names for Slack user ids (users.info, cached in the store); the ids when Slack is not configured."""
    from bot.slack.app import make_client  # Slack is optional for the CLI
    from bot.slack.people import People

    return People(make_client(settings) if settings.slack_bot_token else None, service.store)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def job_json(job: Job, name=lambda who: who) -> dict:
    """A run as the incident review reads it: Slack ids with the names they stand for."""
    def person(who: str) -> dict | None:
        return {"id": who, "name": name(who)} if who else None

    return {
        "id": job.id, "service": None if job.is_app else job.service, "stage": job.stage, "state": str(job.state),
        "origin": job.origin,
        "from": {"commit": job.live_commit, "build": job.live_build},
        "to": {"commit": job.target_commit, "build": job.target_build},
        "direction": "forward" if job.forward else "rollback",
        "requested_by": person(job.requested_by), "approved_by": person(job.approved_by),
        "cancelled_by": person(job.cancelled_by),
        "started": _iso(job.started), "finished": _iso(job.finished), "duration_s": job.duration,
        "reason": job.reason or None, "index_recorded": None if job.recorded is None else bool(job.recorded),
        "card": job.permalink or None,
    }


def cmd_audit(args, settings: Settings) -> int:
    try:
        since = datetime.fromisoformat(args.since)
    except ValueError:
        raise UserError(f"--since {args.since!r} is not a date: give YYYY-MM-DD or an ISO time") from None
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    service = _service(settings)
    rows = service.audit(since.timestamp(), service.key(args.stage, args.service) if args.stage else None)
    name = _people(settings, service).name
    if args.json:
        json.dump([{**r, "at": _iso(r["at"]), "actor_name": name(r["actor"])} for r in rows], sys.stdout, indent=2)
        print()
    else:
        for r in rows:
            print(clean(f"{_iso(r['at'])}  {name(r['actor']):<14} {r['action']:<22} {r['stage'] or '-':<10} "
                        f"{r['job_id'] or '':<5} {json.dumps(r['detail'], sort_keys=True)}"))
    return 0


def cmd_alarms(args, settings: Settings) -> int:
    """The alarms the watch reads for a service's stage, their states, and the watches running here."""
    from bot.engine.watch import alarm_reader, stack_name

    service = _service(settings)
    key = service.key(args.stage, args.service)
    service.may_view(key, _operator(args, settings), None)
    alarms = alarm_reader(service).read(key.stage, key.service, stack_name(service, key))
    names, prefix = settings.catalog.alarm_spec(key.stage, key.service)
    print(f"{key.service} {key.stage}: the alarms of stack {stack_name(service, key)}"
          + (f", and {', '.join(names)}" if names else "") + (f", and every alarm named {prefix}…" if prefix else ""))
    for a in alarms:
        print(clean(f"  {a.state:<18} {a.name}  since {_iso(a.updated)}  {a.reason}"))
    if not alarms:
        print("  (no alarms found)")
    watching = [w for w in service.store.watches() if (w["service"], w["stage"]) == (key.service, key.stage)]
    for w in watching:
        what = f"build {w['build']} ({w['commit_sha'][:7]})"
        print(f"watching {what} ({w['kind']}) until {_iso(w['until'])}")
    return 0


COMMANDS = {
    # name: (handler, what settings it needs)
    "publish": (cmd_publish, ("artifacts",)),
    "mark-deployed": (cmd_mark_deployed, ("artifacts",)),
    "list": (cmd_list, ("artifacts",)),
    "show": (cmd_show, ("artifacts",)),
    "prune": (cmd_prune, ("artifacts",)),
    "rollback": (cmd_rollback, ("engine",)),
    "check-freeze": (cmd_check_freeze, ("artifacts",)),
    "unfreeze": (cmd_unfreeze, ("artifacts",)),
    "cancel": (cmd_cancel, ("engine",)),
    "status": (cmd_status, ("artifacts",)),
    "history": (cmd_history, ()),
    "audit": (cmd_audit, ()),
    "alarms": (cmd_alarms, ("engine",)),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rollback-bot", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Settings come from the environment (ROLLBACK_BUCKET, ROLLBACK_SERVICE, ROLLBACK_REPO, SLACK_BOT_TOKEN, "
               "...): see docs/configuration.md. `rollback-bot COMMAND --help` explains one command.")
    p.add_argument("--version", action="version", version=f"rollback-bot {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("publish", help="store a `serverless package` folder for a stage (run by CI)")
    s.add_argument("--stage", required=True, help="the stage the package was built for")
    s.add_argument("--commit", required=True, help="the commit the package was built from")
    s.add_argument("--package", required=True, help="the folder given to `serverless package --package`")
    s.add_argument("--build-id", help="CI's build id (default: derived from the package's contents)")
    s.add_argument("--author", help="default: the commit's author, from git")
    s.add_argument("--message", help="default: the commit's subject, from git")
    s.add_argument("--deployed", action="store_true", help="also record it as live on the stage")
    s.add_argument("--by", help="who is publishing (default: CI's actor variable or $USER)")

    s = sub.add_parser("mark-deployed", help="record a published build as live (run by CI after deploy)")
    s.add_argument("--stage", required=True, help="the stage CI deployed")
    s.add_argument("--commit", required=True, help="the commit it deployed")
    s.add_argument("--build-id", help="default: the newest build of that commit")
    s.add_argument("--by", help="who deployed (default: CI's actor variable or $USER)")

    s = sub.add_parser("list", help="a stage's builds, newest first")
    s.add_argument("stage", help="the stage whose builds to list (prod, staging, ...)")
    s.add_argument("--limit", type=int, default=20, help="how many builds (default 20)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("show", help="the build a ref names: SHA, SHA prefix, build id or `previous`")
    s.add_argument("stage", help="the stage")
    s.add_argument("ref", help="a commit SHA (4+ characters), a build id, or `previous`")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("prune", help="delete old builds (never the live or last known-good one)")
    s.add_argument("--stage", required=True, help="the stage to prune")
    s.add_argument("--keep", type=int, required=True, help="how many of the newest builds to keep")
    s.add_argument("--dry-run", action="store_true", help="only say what would be deleted")

    s = sub.add_parser("rollback", help="roll a stage back from the terminal (for when Slack is down)")
    s.add_argument("stage", help="the stage to roll back")
    s.add_argument("ref", help="a commit SHA (4+ characters), a build id, or `previous`")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.add_argument("--quiet", action="store_true", help="show the steps, not the deploy output")
    s.add_argument("--by", help="who is rolling back (default: $USER)")
    s.add_argument("--unfreeze", action="store_true", help="for a roll forward: also lift the CI freeze")

    s = sub.add_parser("check-freeze", help="for CI: exit 1 while the stage is frozen or the commit is marked bad")
    s.add_argument("--stage", required=True, help="the stage CI is about to deploy")
    s.add_argument("--commit", help="the commit CI is about to deploy (refused when it is marked bad)")

    s = sub.add_parser("unfreeze", help="let CI deploy the stage again after a rollback")
    s.add_argument("stage", help="the frozen stage")
    s.add_argument("--by", help="who is unfreezing (default: $USER); the policy decides, as in Slack")

    s = sub.add_parser("cancel", help="stop a running rollback, the Slack bot's or a terminal's (this machine)")
    s.add_argument("stage", help="the stage whose rollback to stop")
    s.add_argument("--by", help="who is cancelling (default: $USER); the policy decides, as for the Cancel button")

    s = sub.add_parser("status", help="running rollbacks on this machine (which process runs each) and frozen stages")
    s.add_argument("--json", action="store_true", help="machine-readable")

    s = sub.add_parser("history", help="past rollback jobs of a stage (this machine's record)")
    s.add_argument("stage", help="the stage")
    s.add_argument("--by", help="who is asking (the policy's channel rules do not apply at a terminal)")
    s.add_argument("--json", action="store_true", help="machine-readable, for the incident review")
    s.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")

    s = sub.add_parser("audit", help="the audit trail: requests, approvals, refusals, runs, unfreezes")
    s.add_argument("--since", required=True, help="YYYY-MM-DD or an ISO time (UTC unless it says otherwise)")
    s.add_argument("--stage", help="only this stage")
    s.add_argument("--json", action="store_true", help="machine-readable")

    s = sub.add_parser("alarms", help="the alarms the watch reads for a stage, their states, and running watches")
    s.add_argument("stage", help="the stage")
    s.add_argument("--by", help="who is asking (the policy's channel rules do not apply at a terminal)")

    for name, command in sub.choices.items():  # every command of a stage names its service the same way
        command.add_argument("--service", help="which service (default: the only one, or ROLLBACK_SERVICE)"
                             if name != "audit" else "only this service's entries (with --stage)")

    sub.add_parser("serve", help="run the Slack bot")

    s = sub.add_parser("demo", help="try rollback-bot in the browser: a local Slack channel on an embedded AWS")
    s.add_argument("--port", type=int, default=8080, help="the page's port on 127.0.0.1 (default 8080; 0: any free)")
    s.add_argument("--data-dir", help="where the demo keeps its state (default: $ROLLBACK_DATA_DIR/demo)")
    return p


def dispatch(args, settings: Settings) -> int:
    """Run one parsed command; a UserError is printed (masked, without control characters) and gives 1."""
    mask = Masker(settings.secrets())
    try:
        return COMMANDS[args.command][0](args, settings)
    except RefError as exc:
        print(clean(mask(f"rollback-bot: {exc}")), file=sys.stderr)
        for art in exc.candidates:
            print(clean(mask(f"  {art.commit[:12]}  build {art.build_id}  {art.author}: {art.message}")),
                  file=sys.stderr)
        return EXIT_FAILED
    except UserError as exc:
        print(clean(mask(f"rollback-bot: {exc}")), file=sys.stderr)
        return EXIT_FAILED


def run(argv: list[str], settings: Settings) -> int:
    """A command line, with settings already read (the demo's CI steps)."""
    return dispatch(build_parser().parse_args(argv), settings)
