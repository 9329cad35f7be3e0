"""Block Kit for every message the bot sends. Pure functions: data in, blocks out, no I/O.

Every value that came from outside (commit subjects, authors, build ids, reasons, log lines, stage
names, who did what) goes through ``mrkdwn.esc``/``code``/``user``: nothing people wrote becomes a
mention, a link or a broken code span.
"""

from __future__ import annotations

from bot.core.cards import AppCard, ServiceRow
from bot.core.jobs import APP, Job, JobState, Recorded
from bot.core.plan_ticket import PlanRef
from bot.core.policy import NO_POLICY
from bot.core.records import WatchPurpose
from bot.core.stage_index import Artifact, LiveRecord, Mark, StageIndex
from bot.engine import STEPS, Plan
from bot.slack import ids
from bot.slack.mrkdwn import code, date, esc, esc_message, link, user
from bot.slack.slash import COMMANDS, SEVERAL_COMMANDS

STEP_LABELS = {"restore": "Restore artifact", "checkout": "Check out source", "install": "Install plugins",
               "deploy": "Deploy", "verify": "Verify Lambda code"}
ICONS = {"pending": "▫️", "started": "⏳", "finished": "✅", "failed": "❌", "skipped": "➖"}
MAX_TEXT = 2900  # a section's text may hold 3,000 characters


def _clip(text: str, n: int = MAX_TEXT) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _whole_lines(lines: list[str], limit: int = MAX_TEXT) -> str:
    """As many whole lines as fit (a cut line could break a link or a mention), then how many more."""
    kept, size = [], 0
    for n, line in enumerate(lines):
        if size + len(line) + 40 > limit:
            kept.append(f"…and {len(lines) - n} more")
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(kept)


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text)}}


def context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(text)}]}


def header(text: str) -> dict:
    return {"type": "header", "text": {"type": "plain_text", "text": _clip(text, 150)}}


def button(text: str, action_id: str, value: str, style: str | None = None) -> dict:
    b = {"type": "button", "text": {"type": "plain_text", "text": text}, "action_id": action_id, "value": value}
    if style:
        b["style"] = style
    return b


def _build(a: Artifact, now: float) -> str:
    first_line = (a.message or "(no message)").splitlines()[0] if (a.message or "").strip() else "(no message)"
    return (f"{code(a.short)} build {code(a.build_id)} · {esc(a.author or 'unknown')} · {date(a.created)}"
            f"\n>{esc(first_line)}")


def _commit_lines(commits, limit: int) -> str:
    lines = "\n".join(f"• {code(c.sha[:7])} {esc(c.author)}: {esc(c.subject)}" for c in commits[:limit])
    more = f"\n…and {len(commits) - limit} more" if len(commits) > limit else ""
    return lines + more


def _mark(m: Mark) -> str:
    return f"{user(m.by)}: {esc(m.reason)}"


def choose_service_text(stage: str, ref: str, services: list[str], action: str = "") -> str:
    """A command that needs a service, on a bot of several: which ones there are."""
    names = ", ".join(code(s) for s in services[:50])
    if action:
        return f"Name the service: `/rollback {esc(action)} &lt;service&gt; {esc(stage)}`. Services: {names}."
    return (f"This bot serves several services: name one, for example `/rollback {esc(services[0])} {esc(stage)} "
            f"{esc(ref)}`. Services: {names}. (Rolling back every service to one commit comes next.)")


def help_blocks(stages: list[str], services: list[str] | None = None) -> list[dict]:
    known = ", ".join(code(s) for s in stages) or "none yet (CI adds builds with `rollback-bot publish`)"
    served = f" · Services: {', '.join(code(s) for s in services[:50])}" if services else ""
    return [
        section("*rollback-bot* rolls a stage back to an earlier build: the stored package, the source at "
                "its commit, its plugins, `serverless deploy --package`, then a check that Lambda runs it."),
        section("\n".join(f"`{esc_message(syntax)}` {esc(what)}"
                           for syntax, what in (SEVERAL_COMMANDS if services else COMMANDS))),
        section(f"*Examples*\n`/rollback prod` · `/rollback {esc(services[0])} prod previous` · "
                f"`/rollback {esc(services[0])} prod 3f2a9c1`" if services else
                "*Examples*\n`/rollback prod` · `/rollback prod previous` · `/rollback prod 3f2a9c1` · "
                "`/rollback prod 1234`"),
        context(_clip(f"Stages: {known}{served}")),
    ]


def listing_blocks(index: StageIndex, now: float, limit: int = 10, account: str = "") -> list[dict]:
    """A stage's builds; ``account`` (a bot of several services) names the service and where it runs."""
    live = index.live
    service = index.service if account else ""
    head = (f"*{esc(service)}* in *{esc(index.stage)}*" if service else f"*{esc(index.stage)}*") + \
        f" · {len(index.artifacts)} builds"
    if live:
        head += f" · live {code(live.commit[:7])} (build {code(live.build_id)}) since {date(live.at)}"
    blocks = [section(head)]
    if account:
        blocks.append(context(f"AWS: {esc(account)}"))
    if index.freeze:
        f = index.freeze
        blocks.append(section(f"🧊 *CI is frozen* by {user(f.by)} {date(f.at)}: {esc(f.reason)}"))
    if index.refused:
        blocks.append(section(f"⚠️ {len(index.refused)} entries of index.json failed validation and are ignored: "
                              + esc("; ".join(why for _, _, why in index.refused[:3]))))
    for art in index.artifacts[:limit]:
        tags = []
        if index.is_live(art):
            tags.append("*LIVE*")
        if art.bad:
            tags.append(f"*BAD* ({esc(art.bad.reason)})")
        block = section(("  ".join(tags) + "\n" if tags else "") + _build(art, now))
        if not index.is_live(art):
            label = "Roll forward to this" if index.is_forward(art) else "Roll back to this"
            block["accessory"] = button(label, ids.PLAN_BUILD,
                                        ids.PlanRequest(index.stage, art.build_id, service=service).value())
        blocks.append(block)
    if len(index.artifacts) > limit:
        blocks.append(context(f"{len(index.artifacts) - limit} older builds not shown"))
    return blocks


def stage_overview_blocks(stage: str, rows: list[tuple[StageIndex, str]]) -> list[dict]:
    """``/rollback prod`` on a bot of several services: a line per service, each with its listing."""
    blocks = [section(f"*{esc(stage)}* · {len(rows)} services")]
    for index, account in rows[:45]:  # Slack allows 50 blocks in a message
        live = index.live_artifact()
        text = f"*{esc(index.service)}* "
        text += (f"live {code(live.short)} (build {code(live.build_id)}) since {date(index.live.at)}"
                 if live and index.live else "nothing live recorded")
        if live and live.bad:
            text += " · *BAD*"
        if index.freeze:
            text += f" · 🧊 frozen by {_mark(index.freeze)}"
        text += f"\n_{esc(account)}_" if account else ""
        block = section(_clip(text))
        request = ids.PlanRequest(stage, "", service=index.service)
        block["accessory"] = button("Builds", ids.LIST_BUILDS, request.value())
        blocks.append(block)
    if len(rows) > 45:
        blocks.append(context(f"{len(rows) - 45} more services: `/rollback <service> {esc(stage)}`"))
    return blocks


def plan_title(plan: Plan) -> str:
    return f"{plan.verb} {plan.where} to {plan.target.short}?"


def plan_blocks(plan: Plan, job_id: int, requested_by: str, expires_at: float, now: float,
                needs: str = NO_POLICY, policy_configured: bool = False, running: Job | None = None,
                ref: PlanRef | None = None) -> list[dict]:
    t = plan.target
    blocks = [
        header(plan_title(plan)),
        section(f"*Target*\n{_build(t, now)}\npackage sha256 {code(t.sha256[:12])} · {t.size:,} bytes"
                + (f"\n_chosen as `previous`: {esc(plan.chosen_because)}_" if plan.chosen_because else "")),
    ]
    if plan.account:
        blocks.append(context(f"Service {code(plan.service)} · stage {code(plan.stage)} · AWS: {esc(plan.account)}"))
    if plan.live:
        blocks.append(section(f"*Live now*\n{_build(plan.live, now)}"))
    if plan.commits:
        what = "Commits brought back" if plan.forward else "Commits undone"
        blocks.append(section(f"*{what} ({len(plan.commits)})*\n{_commit_lines(plan.commits, 15)}"))
    fields = []
    if plan.plugins is not None:
        fields.append({"type": "mrkdwn", "text": f"*Plugins*\n{esc(plan.plugins.summary())}"})
    if plan.template is not None:
        d = plan.template
        text = "no resources added or removed" if d.empty else ""
        text += "".join(f"\n– removes {code(k)} ({esc(kind)})" for k, kind in d.removed[:10])
        text += "".join(f"\n+ adds {code(k)} ({esc(kind)})" for k, kind in d.added[:10])
        fields.append({"type": "mrkdwn", "text": _clip(f"*CloudFormation*\n{text.strip()}", 1900)})
    if fields:
        blocks.append({"type": "section", "fields": fields})
    if t.bad:
        blocks.append(section(f"⚠️ {code(t.short)} (build {code(t.build_id)}) is marked bad by {user(t.bad.by)}: "
                              f"{esc(t.bad.reason)}. Deploying it anyway clears the mark."))
    for danger in plan.dangers:
        blocks.append(section(f"🛑 *{esc(danger)}*"))
    for warning in plan.warnings:
        blocks.append(section(f"⚠️ {esc(warning)}"))
    if plan.freeze:
        blocks.append(context(f"🧊 CI is frozen on {esc(plan.stage)}: {esc(plan.freeze.reason)}"))
    if not policy_configured:
        blocks.append(section(f"⚠️ *{NO_POLICY}* (no policy file is set: ROLLBACK_CONFIG)"))
    if running is not None:
        blocks.append(section(f"⏳ Job {running.id} is running on {code(running.where)} now (approved by "
                              f"{user(running.approved_by or running.requested_by)}): an approval is refused "
                              "until it ends."))
    blocks.append(context(f"Requested by {user(requested_by)} · approval needs {esc(needs)} · "
                          f"the buttons expire {date(expires_at)}"))
    elements = [button("Approve", ids.APPROVE, ids.job_value(job_id, ref), "primary"),
                button("Cancel", ids.CANCEL_PLAN, ids.job_value(job_id, ref), "danger")]
    if plan.forward and plan.freeze:
        elements.append({"type": "checkboxes", "action_id": ids.LIFT_FREEZE, "options": [{
            "text": {"type": "plain_text", "text": "Also lift the CI freeze"}, "value": "unfreeze"}]})
    blocks.append({"type": "actions", "block_id": "plan_actions", "elements": elements})
    return blocks


def outdated_plan_blocks(stage: str, target_commit: str, changes: list[str], ref: str,
                         service: str = "") -> list[dict]:
    """A card whose plan changed before approval: nothing was deployed; one click plans again (``service``
    "*": the whole app's plan)."""
    where = f"the app in {stage}" if service == APP else f"{service} in {stage}" if service else stage
    return [
        section(f"~Roll {esc(where)} to {code(target_commit[:7])}~"),
        section("⚠️ *Out of date: nothing was deployed.* Since this card was posted:\n"
                + "\n".join(f"• {esc(c)}" for c in changes)),
        {"type": "actions", "elements": [
            button("Plan again", ids.PLAN_BUILD, ids.PlanRequest(stage, ref, service=service).value(), "primary")]},
    ]


def deployed_blocks(stage: str, art: Artifact, previous: Artifact | None, commits: list, by: str,
                    now: float, service: str = "") -> list[dict]:
    """The deploy notification CI posts: what went live, who, what changed, and a way back.
    ``service`` is named when the bot serves several."""
    where = f"*{esc(service)}* in *{esc(stage)}*" if service else f"*{esc(stage)}*"
    blocks = [section(f"🚀 {where} is now running {_build(art, now)}"
                      + (f"\nDeployed by {user(by)}" if by else ""))]
    if commits:
        blocks.append(section(f"*Commits since {code(previous.short if previous else '?')}*\n"
                              f"{_commit_lines(commits, 10)}"))
    elif previous:
        blocks.append(context(f"Previous live build: {code(previous.short)} build {code(previous.build_id)}"))
    if previous:
        blocks.append({"type": "actions", "elements": [
            button("Roll back", ids.PLAN_BUILD,
                   ids.PlanRequest(stage, "previous", f"{art.commit}:{art.build_id}", service).value(), "danger")]})
    return blocks


def _replaced_by(live: LiveRecord) -> str:
    how = {"rollback": "rolled back", "forward": "rolled forward"}.get(live.via, "deployed")
    return f"{how} to {code(live.commit[:7])} (build {code(live.build_id)}) by {user(live.by)} {date(live.at)}"


def no_longer_live(was_commit: str, was_build: str, live: LiveRecord | None) -> str:
    """What a late click on a deploy notification is told before it gets the plan from what is live now."""
    text = f"{code(was_commit[:7])} (build {code(was_build)}) is no longer live"
    if live is not None:
        text += f": {_replaced_by(live)}"
    return text + ". Here is the plan from what is live now."


def superseded_blocks(stage: str, was: LiveRecord, live: LiveRecord, service: str = "") -> list[dict]:
    """A deploy notification once its build stopped being live: struck through, with what replaced it,
    and no Roll back button (it would now mean "from what is live now", which this message is not)."""
    where = f"*{esc(service)}* in *{esc(stage)}*" if service else f"*{esc(stage)}*"
    return [section(f"~🚀 {where} is now running {code(was.commit[:7])} (build {code(was.build_id)})~"),
            context(f"⏹️ No longer live: {_replaced_by(live)}")]


def run_line(j: Job, parts: list[Job] | None = None) -> str:
    """One run in history (Slack and the App Home): when and how long, who asked and who approved,
    from → to, the outcome and why, and a link to its card. An app rollback is one entry, its services
    (``parts``) under it."""
    took = f" in {j.duration:.0f}s" if j.duration is not None and j.finished else ""
    if j.is_app:
        line = (f"• {date(j.started or j.created)}{took} · app job {j.id} *{esc(j.state)}* {code(j.where)} → "
                f"{code(j.target_commit[:7])} · requested by {user(j.requested_by)}")
    else:
        line = (f"• {date(j.started or j.created)}{took} · job {j.id} *{esc(j.state)}* {code(j.where)} "
                f"{code(j.live_commit[:7] or '?')} → {code(j.target_commit[:7])} (build {code(j.target_build)})"
                f" · requested by {user(j.requested_by)}")
    if j.approved_by:
        line += f", approved by {user(j.approved_by)}"
    if j.cancelled_by:
        line += f", cancelled by {user(j.cancelled_by)}"
    if j.permalink:
        line += f" · {link(j.permalink, 'card')}"
    for p in parts or []:
        line += (f"\n    {esc(p.service)} {code(p.live_commit[:7] or '?')} → {code(p.target_commit[:7])} "
                 f"(build {code(p.target_build)}) {esc(p.state)}")
    if j.reason and (j.state is not JobState.SUCCEEDED or j.is_app):
        # not in _italics_: a reason's own underscores (UPDATE_COMPLETE) would end them
        line += f"\n    why: {_clip(esc_message(j.reason), 300)}"
    return line


MAX_HOME_BLOCKS = 100  # Slack refuses a Home view with more


def _sections(lines: list[str], most: int) -> list[dict]:
    """Lines packed into as few sections as fit (at most ``most``); what does not fit is counted."""
    out: list[dict] = []
    chunk: list[str] = []
    for n, line in enumerate(lines):
        if chunk and sum(len(x) + 1 for x in chunk) + len(line) + 40 > MAX_TEXT:
            if len(out) == most - 1:
                out.append(section("\n".join(chunk) + f"\n…and {len(lines) - n} more"))
                return out
            out.append(section("\n".join(chunk)))
            chunk = []
        chunk.append(line)
    if chunk:
        out.append(section("\n".join(chunk)))
    return out


def home_blocks(stages: list[tuple[StageIndex, dict | None]], jobs: list[Job], now: float,
                policy_configured: bool = True, several: bool = False, watches: list | tuple = (),
                parts: dict[int, list[Job]] | None = None, hidden: int = 0, unsandboxed: str = "",
                unreadable=()) -> list[dict]:
    """The App Home tab: each stage's live build, lock holder and freeze, then recent jobs. Stage rows
    share sections, so 50 services × 3 stages stay within Slack's 100 blocks."""
    blocks = [header("rollback-bot")]
    if not policy_configured:
        blocks.append(section(f"⚠️ *{NO_POLICY}*: set ROLLBACK_CONFIG to a policy file before real use."))
    if unsandboxed:
        blocks.append(section(f"⚠️ {esc(unsandboxed)}"))
    rows = []
    for index, lock in stages:
        live = index.live
        name = f"{esc(index.service)} · {esc(index.stage)}" if several else esc(index.stage)
        text = f"*{name}*: " + (
            f"live {code(live.commit[:7])} (build {code(live.build_id)}) since {date(live.at)}"
            if live else "nothing live recorded")
        if lock:
            text += f"\n⏳ job {lock.job_id} running, started by {user(lock.holder)}"
        if index.freeze:
            text += f"\n🧊 frozen by {_mark(index.freeze)}"
        rows.append(text)
    blocks += _sections(rows, MAX_HOME_BLOCKS - 10)
    blocks += unreadable_block(unreadable)
    if hidden:
        blocks.append(context(f"{hidden} stage{'s' if hidden != 1 else ''} not shown: the policy keeps "
                              f"{'them' if hidden != 1 else 'it'} to their own channels (`/rollback status` there)."))
    if not stages and not hidden:
        blocks.append(section("No stage has builds yet: CI adds them with `rollback-bot publish`."))
    if watches:  # the alarm watch: deploys in their window, rollbacks settling
        rows = []
        for w in watches:
            where = f"{w.service} {w.stage}" if several else w.stage
            what = "deploy of" if w.kind == WatchPurpose.DEPLOY else "rollback to"
            alarmed = w.in_alarm
            rows.append(f"• {code(where)} {what} {code(w.build)} until {date(w.until)}"
                        + (f" · 🚨 in ALARM: {esc(', '.join(alarmed))}" if alarmed else " · alarms OK"))
        blocks.append(section("*Watching*\n" + _whole_lines(rows)))
    blocks.append({"type": "divider"})
    recent = _whole_lines([run_line(j, (parts or {}).get(j.id)) for j in jobs]) or "none yet"
    blocks.append(section(f"*Recent rollbacks*\n{recent}"))
    return blocks


def closed_plan_blocks(stage: str, target_commit: str, why: str) -> list[dict]:
    """A plan card that can no longer be approved (cancelled or expired): no buttons. ``why`` is
    the bot's own mrkdwn."""
    return [section(f"~Roll {esc(stage)} to {code(target_commit[:7])}~"), context(why)]


def interrupted_card_blocks(what: str, target_commit: str, text: str) -> list[dict]:
    """The card of a job whose bot died on another replica: no buttons (nothing of it runs any more).
    ``text`` is the bot's own mrkdwn."""
    return [header(f"⚠️ Rollback interrupted: {what}"), section(f"Target {code(target_commit[:7])}"),
            section(text)]


def job_title(job: Job) -> str:
    done = "✅ Rolled forward" if job.forward else "✅ Rolled back"
    if job.state is JobState.SUCCEEDED and job.recorded == Recorded.PENDING:
        done = "🟥 Deployed, CI NOT frozen"
    if job.state is JobState.SUCCEEDED and job.recorded == Recorded.STALE:
        done = "🟧 Deployed, not recorded"
    running = "⏳ Rolling forward" if job.forward else "⏳ Rolling back"
    if job.state is JobState.RUNNING and job.cancelled_by:
        running = "⏳ Stopping…"
    what = "Roll forward" if job.forward else "Rollback"
    return {JobState.RUNNING: running, JobState.SUCCEEDED: done, JobState.FAILED: f"❌ {what} failed",
            JobState.CANCELLED: f"🛑 {what} cancelled",
            JobState.INTERRUPTED: f"⚠️ {what} interrupted"}.get(job.state, str(job.state))


def unfreeze_command(stage: str, service: str = "") -> str:
    """The command that lifts a freeze, exactly as it must be typed (a bot of several services names the
    service)."""
    return code(f"/rollback unfreeze {service} {stage}" if service else f"/rollback unfreeze {stage}")


def progress_blocks(job: Job, steps: dict[str, tuple[str, float | None]], tail: list[str], now: float) -> list[dict]:
    """The live checklist. ``steps`` maps a step to (status, duration)."""
    state = job.state
    blocks = [header(f"{job_title(job)}: {job.where} → {job.target_commit[:7]}")]
    lines = []
    for step in STEPS:
        status, duration = steps.get(step, ("pending", None))
        took = f" ({duration:.1f}s)" if duration is not None else ""
        lines.append(f"{ICONS.get(status, '▫️')} {STEP_LABELS[step]}{took}")
    blocks.append(section("\n".join(lines)))
    # The plan stays on the card: from → to and the commits, for whoever reads it during or after.
    story = (f"*From* {code(job.live_commit[:7] or '?')} (build {code(job.live_build or '?')}) *→ to* "
             f"{code(job.target_commit[:7])} (build {code(job.target_build)})")
    if job.commit_lines:
        what = "Brings back" if job.forward else "Undoes"
        story += f"\n{what} {job.commit_count} commit{'s' if job.commit_count != 1 else ''}:\n" + "\n".join(
            f"• {code(sha[:7])} {esc(author)}: {esc(subject)}" for sha, author, subject in job.commit_lines[:5])
        if job.commit_count > 5:
            story += f"\n…and {job.commit_count - 5} more"
    blocks.append(section(story))
    elapsed = (job.finished or now) - (job.started or now)
    who = f"approved by {user(job.approved_by)}" if job.approved_by else ""
    times = f" · started {date(job.started)}" if job.started else ""
    times += f" · ended {date(job.finished)}" if job.finished else ""
    where = f" · AWS: {esc(job.account)}" if job.account else ""
    blocks.append(context(f"Job {job.id} · requested by {user(job.requested_by)} {who}{times} · {elapsed:.0f}s{where}"))
    if state is JobState.CANCELLED and job.cancelled_by:
        blocks.append(section(f"🛑 Cancelled by {user(job.cancelled_by)}"))
    if state in (JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED) and job.reason:
        blocks.append(section(f"*Why:* {esc_message(job.reason)}"))
        if tail:
            blocks.append(section("```" + _clip("\n".join(esc(line) for line in tail), 2800) + "```"))
    if state is JobState.RUNNING and job.cancelled_by:
        blocks.append(section(f"⏳ {user(job.cancelled_by)} cancelled: stopping the job's processes…"))
    if state is JobState.SUCCEEDED:
        stage = esc(job.stage)
        if job.recorded == Recorded.STALE:
            blocks.append(section(f"🟧 *Deployed and verified, not recorded.* {esc_message(job.reason)}"))
        elif job.recorded == 0:
            blocks.append(section(f"🟥 *Succeeded, CI NOT frozen.* Lambda runs the target's code (verified), but "
                                  f"index.json could not be updated: CI may deploy over it and nothing is marked "
                                  f"bad yet. rollback-bot keeps retrying and will say here when it lands. "
                                  f"{esc_message(job.reason)}"))
        elif job.forward:
            freeze = "the CI freeze was lifted" if job.unfreeze else "a CI freeze, if any, stays"
            blocks.append(section(f"Lambda runs the target's code (verified). Rolled forward: nothing was marked "
                                  f"bad; {freeze} on `{stage}`."))
        else:
            blocks.append(section(f"Lambda runs the target's code (verified). CI is frozen on {code(job.where)}: "
                                  f"{unfreeze_command(job.stage, job.shown_service)} when the fix is in."))
    if state is JobState.RUNNING and not job.cancelled_by:
        blocks.append({"type": "actions", "elements": [
            button("Cancel", ids.CANCEL_JOB, ids.job_value(job.id, job.plan_ref), "danger")]})
    if job.settle:  # the alarm watch's verdict, some minutes after the rollback
        blocks.append(context(f"👀 {esc_message(job.settle)}"))
    return blocks


def unreadable_block(unreadable) -> list[dict]:
    """The stages whose folder or index.json could not be read: said, the others shown as usual."""
    if not unreadable:
        return []
    return [context(_clip("⚠️ Could not read, so not shown: " + "; ".join(esc_message(u) for u in unreadable)
                          + ". Check that folder in the bucket."))]


def status_blocks(running: list[Job], freezes: dict, now: float, several: bool = False, hidden: int = 0,
                  parts_of=None, unreadable=()) -> list[dict]:
    """Running jobs and frozen stages; ``freezes`` maps a StageKey to its freeze. An app rollback is one
    entry named as its card names it ("app job 3"), its services under it (``parts_of(app_id)``)."""
    def name(key) -> str:
        return f"{key.service} {key.stage}" if several else key.stage

    lines = []
    for j in running:
        if j.app_id:
            continue  # shown under its app
        what = "app job" if j.is_app else "job"
        lines.append(f"• {code(j.where)} → {code(j.target_commit[:7])} {what} {j.id} approved by "
                     f"{user(j.approved_by or j.requested_by)} since {date(j.started or now)}")
        if j.is_app and parts_of is not None:
            lines += [f"    {esc(p.service)} {esc(p.state)} (job {p.id})" for p in parts_of(j.id)]
    blocks = [section("*Running rollbacks*\n" + (_whole_lines(lines) or "none"))]
    blocks.append(section("*Frozen stages*\n" + (_whole_lines([f"• {code(name(k))}: {_mark(m)}"
                                                                for k, m in freezes.items()]) or "none")))
    if hidden:
        blocks.append(context(f"{hidden} more stage{'s' if hidden != 1 else ''} not shown here: the policy keeps "
                              "them to their own channels."))
    return blocks + unreadable_block(unreadable)


def history_text(stage: str, jobs: list[Job], parts: dict[int, list[Job]] | None = None) -> str:
    """``parts``: each app rollback's services, by the app's job id."""
    return (_whole_lines([run_line(j, (parts or {}).get(j.id)) for j in jobs])
            or f"No rollbacks of {code(stage)} yet.")


# -- app rollbacks (every service of a stage to one commit) -------------------------------------------

def app_title(card: AppCard, stage: str) -> str:
    if card.undo_of is not None:
        return f"Roll the finished services of job {card.undo_of} forward again in {stage}?"
    if card.ref.lower() == "previous":
        return f"Undo the newest deploy of {stage}?"
    return f"Roll back the app in {stage} to {card.commit[:7]}?"


def _app_row(s: ServiceRow) -> str:
    name = f"*{esc(s.service)}*"
    if s.moves and s.target:
        frm = code(s.live[0][:7]) if s.live else "`?`"
        row = f"• {name} {frm} → {code(s.target[0][:7])} (build {code(s.target[1])})"
        row += f" · {s.commits} commit{'s' if s.commits != 1 else ''}"
        if s.plugins:
            row += f" · {esc(s.plugins)}"
        if s.removed:
            row += f" · ⚠️ {s.removed} resource(s) removed"
        return row + (f" · _{esc(s.account)}_" if s.account else "")
    icon = "⚠️ " if s.status == "no_build" else ""
    return f"• {name} {icon}left as it is: {esc(s.note)}"


def app_phases_text(phases) -> str:
    return " → ".join(f"{n}. {', '.join(esc(x) for x in p)}" for n, p in enumerate(phases, start=1))


def app_plan_blocks(job_id: int, card: AppCard, stage: str, requested_by: str, expires_at: float, needs: str,
                    policy_configured: bool = True, busy: list[str] | None = None,
                    ref: PlanRef | None = None) -> list[dict]:
    """The app's plan card: a compact row per service, the phases in order, one Approve for all. At 50
    services it stays within Slack's limits: rows that do not fit are counted, and the thread has them."""
    rows = [_app_row(s) for s in card.services]
    blocks = [header(app_title(card, stage)),
              section(f"*{len(card.moving)} of {len(rows)} services move*\n" + _whole_lines(rows, MAX_TEXT - 40)),
              section(f"*Order* ({'deploy order, producers first' if card.forward else 'dependents first'}): "
                      f"{app_phases_text(card.phases)}")]
    for warning in card.warnings[:10]:
        blocks.append(section(_clip(f"⚠️ {esc(warning)}")))
    for b in (busy or [])[:5]:
        blocks.append(section(f"⏳ {esc(b)} is running now: an approval is refused until it ends."))
    if not policy_configured:
        blocks.append(section(f"⚠️ *{NO_POLICY}* (no policy file is set: ROLLBACK_CONFIG)"))
    blocks.append(context(_clip(f"Requested by {user(requested_by)} · approval needs {esc(needs)} · "
                                f"the buttons expire {date(expires_at)}")))
    blocks.append({"type": "actions", "block_id": "plan_actions", "elements": [
        button("Approve", ids.APPROVE, ids.job_value(job_id, ref), "primary"),
        button("Cancel", ids.CANCEL_PLAN, ids.job_value(job_id, ref), "danger")]})
    return blocks


def app_details_text(card: AppCard) -> str:
    """Every service's row, for the thread of a card too long to hold them."""
    return "\n".join(_app_row(s) for s in card.services)


PART_ICONS = {"succeeded": "✅", "failed": "❌", "cancelled": "🛑", "interrupted": "⚠️", "skipped": "▫️",
              "running": "⏳", "approving": "▫️", "refused": "⛔"}


def app_title_of(job: Job) -> str:
    if job.state is JobState.RUNNING:
        return "⏳ Stopping the app rollback…" if job.cancelled_by else "⏳ Rolling back the app"
    return {JobState.SUCCEEDED: "✅ Rolled back the app", JobState.FAILED: "❌ App rollback stopped",
            JobState.CANCELLED: "🛑 App rollback cancelled",
            JobState.INTERRUPTED: "⚠️ App rollback interrupted by a restart"}.get(job.state, f"App rollback {job.state}")


def app_progress_blocks(job: Job, parts: list[Job], steps: dict[int, str], now: float) -> list[dict]:
    """The app's live card: a checklist per phase and service. ``steps`` maps a part's job id to the step
    it is on. It keeps who is where once it ends, and offers the reverse move when it stopped half-way."""
    card = job.app_card
    by_service = {p.service: p for p in parts}
    target = card.commit[:7]
    blocks = [header(f"{app_title_of(job)}: {job.stage}" + (f" → {target}" if target else ""))]
    lines = []
    for n, phase in enumerate(card.phases, start=1):
        lines.append(f"*Phase {n}*")
        for name in phase:
            p = by_service.get(name)
            if p is None:
                continue
            state = str(p.state)
            took = f" ({p.duration:.0f}s)" if p.finished and p.duration is not None else ""
            doing = f": {esc(steps.get(p.id, ''))}" if p.state is JobState.RUNNING and steps.get(p.id) else ""
            lines.append(f"{PART_ICONS.get(state, '▫️')} {esc(name)} {code(p.live_commit[:7] or '?')} → "
                         f"{code(p.target_commit[:7])}{took}{doing}")
    blocks.append(section(_whole_lines(lines)))
    still = [s.service for s in card.services if not s.moves]
    if still:
        blocks.append(context(_clip(f"Left as they are: {esc(', '.join(still))}")))
    elapsed = (job.finished or now) - (job.started or now)
    who = f" approved by {user(job.approved_by)}" if job.approved_by else ""
    times = f" · started {date(job.started)}" if job.started else ""
    times += f" · ended {date(job.finished)}" if job.finished else ""
    blocks.append(context(f"App job {job.id} · requested by {user(job.requested_by)}{who}{times} · {elapsed:.0f}s"))
    if job.state is JobState.CANCELLED and job.cancelled_by:
        blocks.append(section(f"🛑 Cancelled by {user(job.cancelled_by)}"))
    if job.state in (JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED) or (job.reason and job.finished):
        blocks.append(section(_clip(f"*Where each service is:* {esc_message(job.reason)}")))
    if job.state is JobState.SUCCEEDED and not job.reason:
        commands = " · ".join(unfreeze_command(job.stage, p.service) for p in parts if p.state is JobState.SUCCEEDED)
        blocks.append(section(_clip(f"Every service runs its target (verified). CI is frozen on the services that "
                                    f"moved in {code(job.stage)}; when the fix is in: {commands}")))
    if job.state is JobState.RUNNING and not job.cancelled_by:
        blocks.append({"type": "actions", "elements": [
            button("Cancel", ids.CANCEL_JOB, ids.job_value(job.id, job.plan_ref), "danger")]})
    settled = [f"{esc(p.service)}: {esc_message(p.settle)}" for p in parts if p.settle]
    if settled:  # the alarm watch's verdict on each service that moved
        blocks.append(context(_clip("👀 " + " · ".join(settled))))
    finished = [p for p in parts if p.state is JobState.SUCCEEDED]
    if job.state in (JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED) and finished:
        blocks.append({"type": "actions", "elements": [
            button("Roll the finished services forward again", ids.UNDO_APP, ids.job_value(job.id, job.plan_ref))]})
    return blocks
