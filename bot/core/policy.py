"""Who may request and approve rollbacks of which stage, and where (the optional TOML policy file).

    [stages.prod]
    requesters = ["U01ANA", "S0ONCALL"]     # user IDs, or user group IDs (S…)
    approvers = ["S0SRE"]
    approver_must_differ = true
    channels = ["C0INCIDENT", "C0DEPLOYS"]  # where prod may be rolled back, listed, cancelled…
    notify_channel = "C0DEPLOYS"

    [stages."*"]                            # any stage not named above
    approvers = ["S0SRE"]

A missing list means anyone. The file fails closed: an unknown table or key stops start-up naming
the key and its line, and a stage no rule covers (and no "*") is refused. With no file at all,
anyone may do anything, and every plan card says so.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

log = logging.getLogger("rollback-bot.core.policy")
RULE_KEYS = ("requesters", "approvers", "approver_must_differ", "channels", "notify_channel", "auto_rollback")
ACCOUNT_KEYS = ("role_arn", "external_id", "region", "serverless_stage")  # read by bot.core.catalog
WATCH_KEYS = ("alarms", "alarm_prefix", "alarm_services")  # read by bot.core.catalog: which alarms the watch reads
ENV_KEYS = ("env",)  # read by bot.core.catalog: the deploy-time variables (bot.core.variables)
EXECUTOR_KEYS = ("executor", "codebuild_project")  # read by bot.core.catalog: where deploys run (bot.core.executor)
STAGE_KEYS = RULE_KEYS + ACCOUNT_KEYS + WATCH_KEYS + ENV_KEYS + EXECUTOR_KEYS + ("services",)
TOP_KEYS = ("stages", "services")  # [services.*] is the catalog's (bot.core.catalog)
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
STAGE_KEY_RE = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9_-]{0,63})$")
NO_POLICY = "No policy: anyone may approve"


class PolicyError(Exception):
    pass


@dataclass(frozen=True)
class StageRule:
    requesters: tuple[str, ...] | None = None  # None: anyone
    approvers: tuple[str, ...] | None = None
    approver_must_differ: bool = False
    channels: tuple[str, ...] | None = None
    notify_channel: str = ""
    auto_rollback: bool = False  # an alarm after a deploy rolls it back without waiting for a person

    def describe(self) -> str:
        def who(ids):
            return "anyone" if ids is None else ", ".join(ids) or "nobody"

        parts = [f"requesters: {who(self.requesters)}", f"approvers: {who(self.approvers)}"]
        if self.approver_must_differ:
            parts.append("approver must differ from requester")
        parts.append(f"channels: {'any' if self.channels is None else ', '.join(self.channels)}")
        if self.notify_channel:
            parts.append(f"notify: {self.notify_channel}")
        if self.auto_rollback:
            parts.append("auto rollback on alarm")
        return "; ".join(parts)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


def _line_of(text: str, pattern: str, start: int = 0) -> int:
    """The 1-based line where ``pattern`` first matches at or after line ``start``; 0 when not found."""
    rx = re.compile(pattern)
    for n, line in enumerate(text.splitlines()[start:], start + 1):
        if rx.search(line):
            return n
    return 0


def _quoted(name: str) -> str:
    return rf"(?:{re.escape(name)}|\"{re.escape(name)}\"|'{re.escape(name)}')"


def _unknown_keys(table: Mapping, known: tuple[str, ...], label: str, text: str, header: int,
                  at: Callable[[int], str], hint: str) -> list[str]:
    """A problem, with its line, for each key of ``table`` that is not one of ``known``."""
    problems = []
    for key in table:
        if key not in known:
            line = _line_of(text, rf"^\s*{_quoted(key)}\s*=", max(header - 1, 0))
            problems.append(f"{at(line)}: unknown key `{key}` in [{label}] ({hint})")
    return problems


def _rule_fields(raw: Mapping, label: str, text: str, header: int, at: Callable[[int], str],
                 problems: list[str]) -> dict:
    """The rule keys present in one table ([stages.X] or [stages.X.services.Y]), checked."""
    found: dict = {}

    def line_of(key: str) -> str:
        return at(_line_of(text, rf"^\s*{_quoted(key)}\s*=", max(header - 1, 0)))

    for key in ("requesters", "approvers", "channels"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and ID_RE.match(v) for v in value):
            problems.append(f"{line_of(key)}: [{label}] {key} must be a list of Slack IDs "
                            "(U…, S… for a user group, C… for a channel) or CLI user names")
            found[key] = ()  # fail closed, though start-up stops anyway
        else:
            found[key] = tuple(value)
    if "approver_must_differ" in raw:
        must_differ = raw["approver_must_differ"]
        if not isinstance(must_differ, bool):
            problems.append(f"{line_of('approver_must_differ')}: [{label}] approver_must_differ must be true or false")
            must_differ = True
        found["approver_must_differ"] = must_differ
    if "auto_rollback" in raw:
        if not isinstance(raw["auto_rollback"], bool):
            problems.append(f"{line_of('auto_rollback')}: [{label}] auto_rollback must be true or false")
        found["auto_rollback"] = raw["auto_rollback"] is True  # anything else: off (start-up stops anyway)
    if "notify_channel" in raw:
        notify = raw["notify_channel"]
        if not isinstance(notify, str) or (notify and not ID_RE.match(notify)):
            problems.append(f"{line_of('notify_channel')}: [{label}] notify_channel must be one channel ID")
            notify = ""
        found["notify_channel"] = notify
    return found


@dataclass(frozen=True)
class Policy:
    rules: Mapping[str, StageRule] = field(default_factory=dict)
    configured: bool = False
    source: str = ""  # the file it came from, named in refusals
    # [stages.X.services.Y]: a service's own rule on a stage (its keys over the stage's)
    overrides: Mapping[tuple[str, str], StageRule] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Policy:
        try:
            text = path.read_text()
        except FileNotFoundError as exc:
            raise PolicyError(f"{path} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{path} cannot be read: {exc}") from exc
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, source: str = "policy file") -> Policy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source} is not valid TOML: {exc}") from exc
        problems: list[str] = []

        def at(line: int) -> str:
            return f"{source}:{line}" if line else source

        for key in doc:
            if key not in TOP_KEYS:
                line = _line_of(text, rf"^\s*\[{{1,2}}\s*{_quoted(key)}\s*[\].]|^\s*{_quoted(key)}\s*=")
                problems.append(f"{at(line)}: unknown table or key `{key}` (known: {', '.join(TOP_KEYS)})")
        stages = doc.get("stages", {})
        if not isinstance(stages, Mapping):
            problems.append(f"{source}: `stages` must be a table of [stages.<name>] tables")
            stages = {}
        rules: dict[str, StageRule] = {}
        overrides: dict[tuple[str, str], StageRule] = {}
        for stage, raw in stages.items():
            header = _line_of(text, rf"^\s*\[\s*stages\s*\.\s*{_quoted(stage)}\s*\]")
            where = at(header)
            if not STAGE_KEY_RE.match(stage):
                problems.append(f"{where}: [stages.{stage}] is not a stage name (letters, digits, '-', '_' or \"*\")")
            if not isinstance(raw, Mapping):
                problems.append(f"{where}: stages.{stage} must be a table")
                continue
            problems += _unknown_keys(raw, STAGE_KEYS, f"stages.{stage}", text, header, at,
                                      f"known: {', '.join(STAGE_KEYS)}")
            base = StageRule(**_rule_fields(raw, f"stages.{stage}", text, header, at, problems))
            rules[stage] = base
            per_service = raw.get("services", {})
            if not isinstance(per_service, Mapping):
                problems.append(f"{where}: stages.{stage}.services must be a table of [stages.{stage}.services.<name>]")
                continue
            for service, sub in per_service.items():
                label = f"stages.{stage}.services.{service}"
                sub_header = _line_of(text, rf"^\s*\[\s*stages\s*\.\s*{_quoted(stage)}\s*\.\s*services\s*\."
                                            rf"\s*{_quoted(service)}\s*\]")
                if not isinstance(sub, Mapping):
                    problems.append(f"{at(sub_header)}: {label} must be a table")
                    continue
                own = RULE_KEYS + WATCH_KEYS + ENV_KEYS + EXECUTOR_KEYS
                problems += _unknown_keys(sub, own, label, text, sub_header, at,
                                          f"a service may override only {', '.join(own)}")
                overrides[(stage, service)] = replace(base, **_rule_fields(sub, label, text, sub_header, at, problems))
        if problems:
            raise PolicyError("\n".join(problems))
        return cls(rules, configured=True, source=source, overrides=overrides)

    # -- reading ---------------------------------------------------------------------------------

    def rule(self, stage: str, service: str | None = None) -> StageRule | None:
        """The rule for ``service`` on ``stage``: the service's own [stages.X.services.Y] if any, else the
        stage's, else "*"'s. None when a policy file exists and covers neither the stage nor "*"."""
        if not self.configured:
            return StageRule()
        if service:
            for key in ((stage, service), ("*", service) if stage not in self.rules else None):
                if key and key in self.overrides:
                    return self.overrides[key]
        return self.rules.get(stage) or self.rules.get("*")

    def uncovered(self, stage: str) -> Decision:
        return Decision(False, f"The policy file {self.source} has no rule for stage `{stage}` and no "
                               f"[stages.\"*\"], so nobody may act on it. Add [stages.{stage}] to {self.source}.")

    def notify_channel(self, stage: str, default: str, service: str | None = None) -> str:
        rule = self.rule(stage, service)
        return (rule.notify_channel if rule else "") or default

    def notice_channels(self, stage: str, default: str, service: str | None = None) -> set[str]:
        """Where a stage's deploy notifications may be: the bot edits or replies to a notification that
        index.json says is somewhere else (a bucket writer could point it anywhere) nowhere."""
        rule = self.rule(stage, service)
        return {c for c in (self.notify_channel(stage, default, service), default, *((rule.channels or ()) if rule
                                                                                     else ())) if c}

    def group_ids(self) -> set[str]:
        every = [*self.rules.values(), *self.overrides.values()]
        return {i for r in every for i in (r.requesters or ()) + (r.approvers or ()) if i.startswith("S")}

    def describe(self) -> list[str]:
        """Each stage's effective rule, for the start-up log."""
        if not self.configured:
            return [f"{NO_POLICY} (set ROLLBACK_CONFIG): every stage, anyone may request and approve"]
        lines = [f"policy {self.source}:"]
        lines += [f"  {stage}: {rule.describe()}" for stage, rule in sorted(self.rules.items())]
        lines += [f"  {service} on {stage}: {rule.describe()}"
                  for (stage, service), rule in sorted(self.overrides.items())]
        if "*" not in self.rules:
            lines.append("  any other stage: refused (no [stages.\"*\"])")
        return lines

    # -- deciding --------------------------------------------------------------------------------

    @staticmethod
    def _member(user: str, allowed: Iterable[str] | None, groups_of: Callable[[str], set[str]]) -> bool:
        if allowed is None:
            return True
        allowed = set(allowed)
        return user in allowed or bool(groups_of(user) & allowed)

    def may_act_in(self, stage: str, channel: str | None, service: str | None = None) -> Decision:
        """Whether anything about ``stage`` may be done in ``channel`` (None: not in Slack, the terminal)."""
        rule = self.rule(stage, service)
        if rule is None:
            return self.uncovered(stage)
        if channel is not None and rule.channels is not None and channel not in rule.channels:
            where = ", ".join(f"<#{c}>" for c in rule.channels)
            return Decision(False, f"Rollbacks of `{stage}` are requested in {where}, not here.")
        return Decision(True)

    def may_request(self, stage: str, user: str, channel: str | None, groups_of=lambda u: set(),
                    service: str | None = None) -> Decision:
        decision = self.may_act_in(stage, channel, service)
        if not decision.allowed:
            return decision
        if not self._member(user, self.rule(stage, service).requesters, groups_of):
            return Decision(False, f"You are not allowed to request rollbacks of `{stage}`. Ask someone on "
                                   "its requester list, or change the policy file.")
        return Decision(True)

    def may_approve(self, stage: str, user: str, requester: str, channel: str | None = None,
                    groups_of=lambda u: set(), service: str | None = None) -> Decision:
        decision = self.may_act_in(stage, channel, service)
        if not decision.allowed:
            return decision
        rule = self.rule(stage, service)
        if not self._member(user, rule.approvers, groups_of):
            what = f"`{service}` in `{stage}`" if service and (stage, service) in self.overrides else f"`{stage}`"
            return Decision(False, f"You are not an approver for {what}; ask one of its approvers to click.")
        if rule.approver_must_differ and user == requester:
            return Decision(False, f"`{stage}` needs a second person: someone other than the requester must approve.")
        return Decision(True)

    def auto_rollback(self, stage: str, service: str | None = None) -> bool:
        """Whether an alarm after a deploy of ``service`` on ``stage`` rolls it back on its own (fail closed:
        only a policy file that says so)."""
        rule = self.rule(stage, service)
        return bool(self.configured and rule and rule.auto_rollback)

    def approval_needs(self, stage: str, requester: str, service: str | None = None) -> str:
        """What approval needs, said before anyone clicks."""
        rule = self.rule(stage, service)
        if not self.configured:
            return NO_POLICY
        if rule is None:
            return "nobody may approve: the stage is not in the policy file"
        who = "anyone" if rule.approvers is None else "one of " + ", ".join(rule.approvers)
        return who + (" other than the requester" if rule.approver_must_differ else "")


CATALOG_KEYS = ACCOUNT_KEYS + WATCH_KEYS + ENV_KEYS + EXECUTOR_KEYS  # read once at start-up, into the catalog


def catalog_view(path: Path | None) -> dict:
    """The parts of the config file the catalog reads (services, and each stage's account, alarm and
    variable keys): the bot builds its engines from them at start-up, so a change needs a restart."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8")) if path else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    stages = doc.get("stages") if isinstance(doc.get("stages"), dict) else {}
    view: dict = {"services": doc.get("services", {})}
    for stage, table in stages.items():
        if not isinstance(table, dict):
            continue
        view[f"stages.{stage}"] = {k: table[k] for k in CATALOG_KEYS if k in table}
        subs = table.get("services") if isinstance(table.get("services"), dict) else {}
        for name, sub in subs.items():
            if isinstance(sub, dict):
                view[f"stages.{stage}.services.{name}"] = {k: sub[k] for k in CATALOG_KEYS if k in sub}
    return view


class PolicySource:
    """The policy in force, reloaded when its file changes. A new file is validated first: an invalid
    one keeps the old policy in force and says why in the log (once per change of the file)."""

    def __init__(self, policy: Policy, path: Path | None = None, check_every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self._policy = policy
        self.path = path
        self.check_every = check_every
        self.clock = clock
        self._seen = self._stamp()
        self._checked = clock()
        self._lock = threading.Lock()
        self.last_error = ""
        self._catalog = catalog_view(path)  # as the bot started with it
        self.restart_needed: list[str] = []  # the catalog tables that changed since start-up

    def _stamp(self) -> tuple | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return ("missing",)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> Policy:
        if self.path is None:
            return self._policy
        with self._lock:
            if self.clock() - self._checked < self.check_every:
                return self._policy
            self._checked = self.clock()
            stamp = self._stamp()
            if stamp == self._seen:
                return self._policy
            self._seen = stamp
            try:
                new = Policy.load(self.path)
            except PolicyError as exc:
                self.last_error = str(exc)
                log.error("the policy file changed but is invalid; the previous policy stays in force:\n%s", exc)
                return self._policy
            self._policy, self.last_error = new, ""
            log.info("policy reloaded from %s:\n%s", self.path, "\n".join(new.describe()))
            now = catalog_view(self.path)
            self.restart_needed = sorted(k for k in set(now) | set(self._catalog) if now.get(k) != self._catalog.get(k))
            if self.restart_needed:
                log.warning("%s also changed %s: services, roles, regions, alarms and variables are read at "
                            "start-up; restart the bot for these to take effect (the policy itself is in force "
                            "now)", self.path, ", ".join(f"[{k}]" for k in self.restart_needed))
            return new
