"""Who may request and approve rollbacks of which stage, and where (the optional TOML policy file).

    [stages.prod]
    requesters = ["U01ANA", "S0ONCALL"]     # user IDs, or user group IDs (S…)
    approvers = ["S0SRE"]
    approver_must_differ = true
    channels = ["C0INCIDENT", "C0DEPLOYS"]  # where /rollback prod may be used
    notify_channel = "C0DEPLOYS"

    [stages."*"]                            # any stage not named above
    approvers = ["S0SRE"]

A missing list means anyone. With no policy file at all, anyone may do anything: the README says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field


class PolicyError(Exception):
    pass


@dataclass(frozen=True)
class StageRule:
    requesters: tuple[str, ...] | None = None  # None: anyone
    approvers: tuple[str, ...] | None = None
    approver_must_differ: bool = False
    channels: tuple[str, ...] | None = None
    notify_channel: str = ""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


@dataclass(frozen=True)
class Policy:
    rules: Mapping[str, StageRule] = field(default_factory=dict)
    configured: bool = False

    @classmethod
    def from_toml(cls, doc: Mapping) -> Policy:
        if not doc:
            return cls()
        problems = []
        rules = {}
        for stage, raw in (doc.get("stages") or {}).items():
            if not isinstance(raw, Mapping):
                problems.append(f"[stages.{stage}] must be a table")
                continue
            unknown = set(raw) - {"requesters", "approvers", "approver_must_differ", "channels", "notify_channel"}
            if unknown:
                problems.append(f"[stages.{stage}] has unknown keys: {', '.join(sorted(unknown))}")

            def ids(key: str, stage=stage, raw=raw) -> tuple[str, ...] | None:
                value = raw.get(key)
                if value is None:
                    return None
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    problems.append(f"[stages.{stage}] {key} must be a list of Slack IDs")
                    return None
                return tuple(value)

            rules[stage] = StageRule(
                requesters=ids("requesters"), approvers=ids("approvers"),
                approver_must_differ=bool(raw.get("approver_must_differ", False)),
                channels=ids("channels"), notify_channel=str(raw.get("notify_channel", "")),
            )
        if problems:
            raise PolicyError("; ".join(problems))
        return cls(rules, configured=True)

    def rule(self, stage: str) -> StageRule:
        return self.rules.get(stage) or self.rules.get("*") or StageRule()

    def notify_channel(self, stage: str, default: str) -> str:
        return self.rule(stage).notify_channel or default

    @staticmethod
    def _member(user: str, allowed: Iterable[str] | None, groups_of: Callable[[str], set[str]]) -> bool:
        if allowed is None:
            return True
        allowed = set(allowed)
        return user in allowed or bool(groups_of(user) & allowed)

    def may_request(self, stage: str, user: str, channel: str, groups_of=lambda u: set()) -> Decision:
        rule = self.rule(stage)
        if rule.channels is not None and channel not in rule.channels:
            where = ", ".join(f"<#{c}>" for c in rule.channels)
            return Decision(False, f"Rollbacks of `{stage}` are requested in {where}, not here.")
        if not self._member(user, rule.requesters, groups_of):
            return Decision(False, f"You are not allowed to request rollbacks of `{stage}`. Ask someone on "
                                   "its requester list, or change the policy file.")
        return Decision(True)

    def may_approve(self, stage: str, user: str, requester: str, groups_of=lambda u: set()) -> Decision:
        rule = self.rule(stage)
        if not self._member(user, rule.approvers, groups_of):
            return Decision(False, f"You are not an approver for `{stage}`; ask one of its approvers to click.")
        if rule.approver_must_differ and user == requester:
            return Decision(False, f"`{stage}` needs a second person: someone other than the requester must approve.")
        return Decision(True)
