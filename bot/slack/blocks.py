"""Block Kit for every message the bot sends. Pure functions: data in, blocks out, no I/O."""

from __future__ import annotations

import json

from bot.pipeline import STEPS
from bot.plan import Plan
from bot.slack.commands import USAGE
from bot.stage_index import Artifact, StageIndex
from bot.terminal import age

STEP_LABELS = {"restore": "Restore artifact", "checkout": "Check out source", "install": "Install plugins",
               "deploy": "Deploy", "verify": "Verify Lambda code"}
ICONS = {"pending": "▫️", "started": "⏳", "finished": "✅", "failed": "❌", "skipped": "➖"}
MAX_TEXT = 2900  # a section's text may hold 3,000 characters


def _clip(text: str, n: int = MAX_TEXT) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text)}}


def context(text: str) -> dict:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(text)}]}


def button(text: str, action_id: str, value: str, style: str | None = None) -> dict:
    b = {"type": "button", "text": {"type": "plain_text", "text": text}, "action_id": action_id, "value": value}
    if style:
        b["style"] = style
    return b


def _build(a: Artifact, now: float) -> str:
    who = a.author or "unknown"
    return f"`{a.short}` build `{a.build_id}` · {who} · {age(now - a.created)} ago\n>{a.message or '(no message)'}"


def help_blocks(stages: list[str]) -> list[dict]:
    known = ", ".join(f"`{s}`" for s in stages) or "none yet (CI adds builds with `rollback-bot publish`)"
    return [
        section("*rollback-bot* rolls a stage back to an earlier build: the stored package, the source at "
                "its commit, its plugins, `serverless deploy --package`, then a check that Lambda runs it."),
        section(USAGE.replace(" · ", "\n")),
        section("*Examples*\n`/rollback prod` · `/rollback prod previous` · `/rollback prod 3f2a9c1` · "
                "`/rollback prod 1234`"),
        context(f"Stages: {known}"),
    ]


def listing_blocks(index: StageIndex, now: float, limit: int = 10) -> list[dict]:
    live = index.live
    head = f"*{index.stage}* · {len(index.artifacts)} builds"
    if live:
        head += f" · live `{live.commit[:7]}` (build `{live.build_id}`) for {age(now - live.at)}"
    blocks = [section(head)]
    if index.freeze:
        f = index.freeze
        blocks.append(section(f"🧊 *CI is frozen* by <@{f.by}> {age(now - f.at)} ago: {f.reason}"))
    for art in index.artifacts[:limit]:
        tags = []
        if index.is_live(art):
            tags.append("*LIVE*")
        if art.bad:
            tags.append(f"*BAD* ({art.bad.reason})")
        block = section(("  ".join(tags) + "\n" if tags else "") + _build(art, now))
        if not index.is_live(art):
            block["accessory"] = button("Roll back to this", "plan_build",
                                        json.dumps({"stage": index.stage, "ref": art.build_id}))
        blocks.append(block)
    if len(index.artifacts) > limit:
        blocks.append(context(f"{len(index.artifacts) - limit} older builds not shown"))
    return blocks


def plan_blocks(plan: Plan, job_id: int, requested_by: str, expires_at: float, now: float) -> list[dict]:
    t = plan.target
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": f"Roll back {plan.stage} to {t.short}?"}},
        section(f"*Target*\n{_build(t, now)}"
                + (f"\n_chosen as `previous`: {plan.chosen_because}_" if plan.chosen_because else "")),
    ]
    if plan.live:
        blocks.append(section(f"*Live now*\n{_build(plan.live, now)}"))
    if plan.commits:
        lines = "\n".join(f"• `{c.sha[:7]}` {c.author}: {c.subject}" for c in plan.commits[:15])
        more = f"\n…and {len(plan.commits) - 15} more" if len(plan.commits) > 15 else ""
        blocks.append(section(f"*Commits undone ({len(plan.commits)})*\n{lines}{more}"))
    fields = []
    if plan.plugins is not None:
        fields.append({"type": "mrkdwn", "text": f"*Plugins*\n{plan.plugins.summary()}"})
    if plan.template is not None:
        d = plan.template
        text = "no resources added or removed" if d.empty else ""
        text += "".join(f"\n– removes `{k}` ({t})" for k, t in d.removed[:10])
        text += "".join(f"\n+ adds `{k}` ({t})" for k, t in d.added[:10])
        fields.append({"type": "mrkdwn", "text": _clip(f"*CloudFormation*\n{text.strip()}", 1900)})
    if fields:
        blocks.append({"type": "section", "fields": fields})
    for warning in plan.warnings:
        blocks.append(section(f"⚠️ {warning}"))
    if plan.freeze:
        blocks.append(context(f"🧊 CI is frozen on {plan.stage}: {plan.freeze.reason}"))
    blocks.append(context(f"Requested by <@{requested_by}> · the buttons expire in {age(expires_at - now)}"))
    blocks.append({"type": "actions", "block_id": "plan_actions", "elements": [
        button("Approve", "approve", str(job_id), "primary"),
        button("Cancel", "cancel_plan", str(job_id), "danger"),
    ]})
    return blocks


def deployed_blocks(stage: str, art: Artifact, previous: Artifact | None, commits: list, by: str,
                    now: float) -> list[dict]:
    """The deploy notification CI posts: what went live, who, what changed, and a way back."""
    blocks = [section(f"🚀 *{stage}* is now running {_build(art, now)}" + (f"\nDeployed by {by}" if by else ""))]
    if commits:
        lines = "\n".join(f"• `{c.sha[:7]}` {c.author}: {c.subject}" for c in commits[:10])
        blocks.append(section(f"*Commits since `{previous.short if previous else '?'}`*\n{lines}"))
    elif previous:
        blocks.append(context(f"Previous live build: `{previous.short}` build `{previous.build_id}`"))
    if previous:
        blocks.append({"type": "actions", "elements": [
            button("Roll back", "plan_build", json.dumps({"stage": stage, "ref": "previous"}), "danger")]})
    return blocks


def home_blocks(stages: list[tuple[StageIndex, dict | None]], jobs: list[dict], now: float) -> list[dict]:
    """The App Home tab: each stage's live build, lock holder and freeze, then recent jobs."""
    blocks = [{"type": "header", "text": {"type": "plain_text", "text": "rollback-bot"}}]
    for index, lock in stages:
        live = index.live
        text = f"*{index.stage}*: " + (f"live `{live.commit[:7]}` (build `{live.build_id}`) for {age(now - live.at)}"
                                       if live else "nothing live recorded")
        if lock:
            text += f"\n⏳ job {lock['job_id']} running, started by <@{lock['holder']}>"
        if index.freeze:
            text += f"\n🧊 frozen by <@{index.freeze.by}>: {index.freeze.reason}"
        blocks.append(section(text))
    if not stages:
        blocks.append(section("No stage has builds yet: CI adds them with `rollback-bot publish`."))
    blocks.append({"type": "divider"})
    recent = "\n".join(f"• job {j['id']} *{j['state']}* `{j['stage']}` → `{j['target_commit'][:7]}` "
                        f"{age(now - j['created'])} ago" for j in jobs) or "none yet"
    blocks.append(section(f"*Recent rollbacks*\n{recent}"))
    return blocks


def closed_plan_blocks(plan_title: str, why: str) -> list[dict]:
    """A plan card that can no longer be approved (cancelled or expired): no buttons."""
    return [section(f"~{plan_title}~"), context(why)]


def progress_blocks(job: dict, steps: dict[str, tuple[str, float | None]], tail: list[str], now: float) -> list[dict]:
    """The live checklist. ``steps`` maps a step to (status, duration)."""
    state = job["state"]
    title = {"running": "⏳ Rolling back", "succeeded": "✅ Rolled back", "failed": "❌ Rollback failed",
             "cancelled": "🛑 Rollback cancelled", "interrupted": "⚠️ Rollback interrupted"}.get(state, state)
    blocks = [
        {"type": "header", "text": {"type": "plain_text",
                                    "text": f"{title}: {job['stage']} → {job['target_commit'][:7]}"}},
    ]
    lines = []
    for step in STEPS:
        status, duration = steps.get(step, ("pending", None))
        took = f" ({duration:.1f}s)" if duration is not None else ""
        lines.append(f"{ICONS.get(status, '▫️')} {STEP_LABELS[step]}{took}")
    blocks.append(section("\n".join(lines)))
    elapsed = (job.get("finished") or now) - (job.get("started") or now)
    who = f"approved by <@{job['approved_by']}>" if job.get("approved_by") else ""
    blocks.append(context(f"Job {job['id']} · requested by <@{job['requested_by']}> {who} · {elapsed:.0f}s"))
    if state in ("failed", "cancelled", "interrupted") and job.get("reason"):
        blocks.append(section(f"*Why:* {job['reason']}"))
        if tail:
            blocks.append(section("```" + _clip("\n".join(tail), 2800) + "```"))
    if state == "succeeded":
        blocks.append(section(f"Lambda runs the target's code (verified). CI is frozen on `{job['stage']}`: "
                              f"`/rollback unfreeze {job['stage']}` when the fix is in."))
    if state == "running":
        blocks.append({"type": "actions", "elements": [button("Cancel", "cancel_job", str(job["id"]), "danger")]})
    return blocks


def status_blocks(running: list[dict], freezes: dict[str, str], now: float) -> list[dict]:
    blocks = [section("*Running rollbacks*\n" + ("\n".join(
        f"• `{j['stage']}` → `{j['target_commit'][:7]}` job {j['id']} by <@{j['approved_by'] or j['requested_by']}>"
        f" for {age(now - (j['started'] or now))}" for j in running) or "none"))]
    blocks.append(section("*Frozen stages*\n" + ("\n".join(f"• `{s}`: {why}" for s, why in freezes.items())
                                                 or "none")))
    return blocks
