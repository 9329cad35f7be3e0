"""Which services this bot serves, where each one's serverless.yml is, in which order they deploy, and
in which AWS account and region each stage lives.

It is read from the same TOML file as the policy (ROLLBACK_CONFIG):

    [services.api]                  # the service's name, as in its serverless.yml
    dir = "services/api"            # folder of its serverless.yml in the repository
    # repo = "…"                    # default ROLLBACK_REPO

    [services.worker]
    dir = "services/worker"
    after = ["api"]                 # deploy order: worker deploys after api

    [stages.prod]                   # (the policy keys of bot.core.policy, plus:)
    role_arn = "arn:aws:iam::111111111111:role/rollback-deployer"
    external_id = "…"
    region = "eu-west-1"
    serverless_stage = "prod"       # the --stage given to serverless (default: the stage's name)
    executor = "codebuild"          # deploys run as builds of this CodeBuild project in the stage's account
    codebuild_project = "rollback-prod"   # (default executor = "local": the bot's host; docs/codebuild.md)

A repository with a serverless-compose.yml adds its services (``path``) and ``dependsOn``;
[services] entries add to them or override them. Without a [services] table, the catalog is the one
service of ROLLBACK_SERVICE, as before.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

import yaml

from bot.core.errors import UserError
from bot.core.executor import LOCAL, Executor, parse_executor
from bot.core.names import closest
from bot.core.variables import VariableSource, parse_table

SERVICE_KEYS = ("dir", "repo", "after")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
EXTERNAL_ID_RE = re.compile(r"^[\w+=,.@:/-]{2,1224}$")
ALARM_RE = re.compile(r"^[\w .:/#+=@-]{1,255}$")
COMPOSE_FILE = "serverless-compose.yml"
# the first words of `/rollback` commands: a service so named could never be asked for (bot.slack.slash)
COMMAND_WORDS = frozenset({"help", "status", "history", "unfreeze", "cancel"})


def name_clashes(name: str, stages, source: str, what: str) -> list[str]:
    """A service named like a stage or a command word makes `/rollback <word> …` mean two things."""
    if name.lower() in COMMAND_WORDS:
        return [f"{source}: {what} `{name}` is named like the command `/rollback {name.lower()}`; rename it"]
    if name in stages:
        return [f"{source}: `{name}` is both a stage and a service; rename one, since `/rollback {name} …` could "
                "mean either"]
    return []


class UnknownService(UserError):
    pass


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    dir: str = "."
    repo: str = ""  # "" means ROLLBACK_REPO
    after: tuple[str, ...] = ()
    compose: bool = False  # from serverless-compose.yml: its folder is read again at each rollback's commit


@dataclass(frozen=True)
class Account:
    """Where a stage's AWS work happens. No role: the bot's own credentials."""

    role_arn: str = ""
    external_id: str = ""
    region: str = ""
    serverless_stage: str = ""

    @property
    def account_id(self) -> str:
        m = ROLE_ARN_RE.match(self.role_arn)
        return m.group(1) if m else ""

    def describe(self) -> str:
        who = (f"account {self.account_id} (role {self.role_arn.rsplit('/', 1)[-1]})" if self.role_arn
               else "the bot's own credentials")
        return f"{who}, {self.region}" if self.region else who


@dataclass(frozen=True)
class Catalog:
    services: Mapping[str, ServiceEntry] = field(default_factory=dict)
    accounts: Mapping[str, Account] = field(default_factory=dict)  # by stage name, and "*"
    # alarms named for the watch: (stage, service or "") -> (names, prefix)
    alarms: Mapping[tuple[str, str], tuple[tuple[str, ...], str]] = field(default_factory=dict)
    default_region: str = "us-east-1"
    # deploy-time variables: (stage or "*", service or "") -> NAME -> source (bot.core.variables)
    variables: Mapping[tuple[str, str], Mapping[str, VariableSource]] = field(default_factory=dict)
    default_service: str = ""  # ROLLBACK_SERVICE; with one service, that one
    configured: bool = False  # from a [services] table (or Compose), not ROLLBACK_SERVICE alone
    # a stage-wide alarm_prefix applies only to the services its alarm_services names: (stage) -> names
    prefix_services: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # where deploys run: (stage or "*", service or "") -> executor (bot.core.executor)
    executors: Mapping[tuple[str, str], Executor] = field(default_factory=dict)

    @classmethod
    def single(cls, service: str, service_dir: str = ".", repo: str = "", region: str = "us-east-1",
               accounts: Mapping[str, Account] | None = None) -> Catalog:
        services = {service: ServiceEntry(service, service_dir, repo)} if service else {}
        return cls(services, dict(accounts or {}), default_region=region, default_service=service)

    # -- reading ---------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.services)

    def service(self, name: str) -> ServiceEntry:
        if name in self.services:
            return self.services[name]
        guess = closest(name, self.services)
        known = ", ".join(f"`{n}`" for n in self.services) or "none"
        hint = f" Did you mean `{guess}`?" if guess else ""
        raise UnknownService(f"This bot does not serve a service `{name}`.{hint} It serves: {known}.")

    def resolve(self, name: str | None) -> str:
        """The service a command means: the one it names, else the default, else the only one."""
        if name:
            return self.service(name).name
        if self.default_service:
            return self.default_service
        if len(self.services) == 1:
            return next(iter(self.services))
        raise UnknownService("This bot serves several services: name one (" + ", ".join(self.services) + ").")

    def account(self, stage: str) -> Account:
        found = self.accounts.get(stage) or self.accounts.get("*") or Account()
        return replace(found, region=found.region or self.default_region)

    def variables_for(self, stage: str, service: str) -> dict[str, VariableSource]:
        """A deploy's variables: "*" then the stage, each overridden by the service's own table."""
        out: dict[str, VariableSource] = {}
        for key in (("*", ""), (stage, ""), ("*", service), (stage, service)):
            out.update(self.variables.get(key, {}))
        return out

    def alarm_spec(self, stage: str, service: str) -> tuple[tuple[str, ...], str]:
        """The alarms named for a service's stage (besides its stack's own): the service's, else the stage's."""
        for key in ((stage, service), (stage, ""), ("*", service), ("*", "")):
            if key in self.alarms:
                names, prefix = self.alarms[key]
                if key[1] == "" and prefix and key[0] in self.prefix_services \
                        and service not in self.prefix_services[key[0]]:
                    prefix = ""  # the stage's prefix names other services: not this one's alarms
                return names, prefix
        return (), ""

    def executor_for(self, stage: str, service: str) -> Executor:
        """Where a service's deploys to a stage run: its own table's choice, else the stage's, else the host."""
        for key in ((stage, service), (stage, ""), ("*", service), ("*", "")):
            if key in self.executors:
                return self.executors[key]
        return LOCAL

    def serverless_stage(self, stage: str) -> str:
        return self.account(stage).serverless_stage or stage

    def phases(self, names: list[str] | None = None) -> list[list[str]]:
        """The deploy order as phases: each service after every service it names in ``after``."""
        names = list(self.services) if names is None else names
        placed: dict[str, int] = {}

        def depth(n: str, seen: tuple[str, ...] = ()) -> int:
            if n not in placed:
                deps = [d for d in self.services[n].after if d in self.services and d not in seen]
                placed[n] = 1 + max((depth(d, seen + (n,)) for d in deps), default=-1)
            return placed[n]

        out: dict[int, list[str]] = {}
        for n in names:
            out.setdefault(depth(n), []).append(n)
        return [sorted(out[k]) for k in sorted(out)]

    @staticmethod
    def compose_path(compose_text: str | None, service: str) -> str | None:
        """Where a Compose file (one commit's) puts ``service``, or None when it does not say."""
        try:
            doc = yaml.safe_load(compose_text or "")
        except yaml.YAMLError:
            return None
        entry = doc.get("services", {}).get(service) if isinstance(doc, Mapping) and \
            isinstance(doc.get("services"), Mapping) else None
        path = entry.get("path", ".") if isinstance(entry, Mapping) else None
        return path if isinstance(path, str) and _inside(path) else None

    def with_compose(self, compose: Mapping, source: str = COMPOSE_FILE) -> tuple[Catalog, list[str]]:
        """Add the services of a serverless-compose.yml: [services] entries in the file win."""
        problems: list[str] = []
        found: dict[str, ServiceEntry] = {}
        raw = compose.get("services") if isinstance(compose, Mapping) else None
        if not isinstance(raw, Mapping):
            return self, [f"{source}: no `services` table"]
        for name, entry in raw.items():
            if not isinstance(name, str) or not NAME_RE.match(name) or not isinstance(entry, Mapping):
                problems.append(f"{source}: service {str(name)[:60]!r} is not a name with a table")
                continue
            path = entry.get("path", ".")
            depends = entry.get("dependsOn", [])
            depends = [depends] if isinstance(depends, str) else depends
            if not isinstance(path, str) or not _inside(path):
                problems.append(f"{source}: {name}.path must be a relative folder inside the repository")
                continue
            if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
                problems.append(f"{source}: {name}.dependsOn must be a service name or a list of them")
                depends = []
            clash = name_clashes(name, set(self.accounts) - {"*"}, source, "service")
            if clash and not (self.configured and name in self.services):
                problems += clash
                continue
            found[name] = ServiceEntry(name, path, "", tuple(depends), compose=True)
        merged = {**found, **{k: v for k, v in self.services.items() if self.configured}}
        if not self.configured:  # ROLLBACK_SERVICE alone: Compose says which services there are
            merged = found or dict(self.services)
        problems += _check_order(merged, source)
        return replace(self, services=merged, configured=True), problems

    # -- parsing ---------------------------------------------------------------------------------

    @classmethod
    def parse(cls, doc: Mapping, source: str, default_service: str = "", default_dir: str = ".",
              default_repo: str = "", default_region: str = "us-east-1") -> tuple[Catalog, list[str]]:
        """The catalog in a parsed config file, and every problem with it (the policy keys are the
        policy's). Names of services and stages must not collide."""
        problems: list[str] = []
        raw_services = doc.get("services", {})
        services: dict[str, ServiceEntry] = {}
        if not isinstance(raw_services, Mapping):
            problems.append(f"{source}: `services` must be a table of [services.<name>] tables")
            raw_services = {}
        for name, raw in raw_services.items():
            label = f"{source}: [services.{name}]"
            if not NAME_RE.match(name):
                problems.append(f"{label} is not a service name (letters, digits, '-' or '_')")
            problems += name_clashes(name, (), label, "the service")  # its stages are checked below
            if not isinstance(raw, Mapping):
                problems.append(f"{label} must be a table")
                continue
            for key in raw:
                if key not in SERVICE_KEYS:
                    problems.append(f"{label}: unknown key `{key}` (known: {', '.join(SERVICE_KEYS)})")
            where = raw.get("dir", ".")
            if not isinstance(where, str) or not _inside(where):
                problems.append(f"{label}: dir must be a relative folder inside the repository")
                where = "."
            repo = raw.get("repo", "")
            if not isinstance(repo, str):
                problems.append(f"{label}: repo must be a git URL or path")
                repo = ""
            after = raw.get("after", [])
            if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
                problems.append(f"{label}: after must be a list of service names")
                after = []
            services[name] = ServiceEntry(name, where, repo, tuple(after))
        configured = bool(services)
        if not services and default_service:
            services = {default_service: ServiceEntry(default_service, default_dir, default_repo)}
        if configured and default_service and default_service not in services:
            problems.append(f"ROLLBACK_SERVICE {default_service!r} is not one of the services in {source} "
                            f"({', '.join(services)})")
        problems += _check_order(services, source) if configured else []

        accounts: dict[str, Account] = {}
        alarms: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {}
        variables: dict[tuple[str, str], dict[str, VariableSource]] = {}
        prefix_services: dict[str, tuple[str, ...]] = {}
        executors: dict[tuple[str, str], Executor] = {}
        stages = doc.get("stages", {})
        for stage, raw in (stages.items() if isinstance(stages, Mapping) else []):
            if not isinstance(raw, Mapping):
                continue  # the policy reports it
            label = f"{source}: [stages.{stage}]"
            role = raw.get("role_arn", "")
            if not isinstance(role, str) or (role and not ROLE_ARN_RE.match(role)):
                problems.append(f"{label}: role_arn must be an IAM role ARN "
                                "(arn:aws:iam::<12-digit account>:role/<name>)")
                role = ""
            external = raw.get("external_id", "")
            if not isinstance(external, str) or (external and not EXTERNAL_ID_RE.match(external)):
                problems.append(f"{label}: external_id must be 2-1224 characters: letters, digits, +=,.@:/-")
                external = ""
            if external and not role:
                problems.append(f"{label}: external_id without role_arn means nothing; add role_arn")
            region = raw.get("region", "")
            if not isinstance(region, str) or (region and not REGION_RE.match(region)):
                problems.append(f"{label}: region {str(region)[:40]!r} is not an AWS region (like eu-west-1)")
                region = ""
            sls_stage = raw.get("serverless_stage", "")
            if not isinstance(sls_stage, str) or (sls_stage and not NAME_RE.match(sls_stage)):
                problems.append(f"{label}: serverless_stage must be letters, digits, '-' or '_'")
                sls_stage = ""
            accounts[stage] = Account(role, external, region, sls_stage)
            subs = raw.get("services") if isinstance(raw.get("services"), Mapping) else {}
            for who, table in [("", raw), *[(n, t) for n, t in subs.items() if isinstance(t, Mapping)]]:
                spec = _alarm_spec(table, f"{label[:-1]}{'.services.' + who if who else ''}]", problems)
                if spec is not None:
                    alarms[(stage, who)] = spec
                if not who and spec is not None and spec[1] and len(services) > 1:
                    named = table.get("alarm_services")
                    if (not isinstance(named, list) or not named
                            or not all(isinstance(n, str) and n in services for n in named)):
                        problems.append(
                            f"{label}: alarm_prefix = {spec[1]!r} would offer (or run) rollbacks of every service of "
                            f"`{stage}` for any alarm it matches; name the services it watches with alarm_services "
                            f"= [\"{next(iter(services))}\", …] (services here: {', '.join(services)}), or move it "
                            f"under [stages.{stage}.services.<name>]")
                    else:
                        prefix_services[stage] = tuple(named)
                runs_on = parse_executor(table, f"{label[:-1]}{'.services.' + who if who else ''}]", problems)
                if runs_on is not None:
                    executors[(stage, who)] = runs_on
                if "env" in table:
                    variables[(stage, who)] = parse_table(table["env"], f"{source}: stages.{stage}"
                                                          + (f".services.{who}" if who else ""), problems)
            if stage in services:
                problems.append(f"{label}: `{stage}` is both a stage and a service; rename one, since "
                                f"`/rollback {stage} …` could mean either")
        catalog = cls(services, accounts, alarms, default_region, variables, default_service or "", configured,
                      prefix_services, executors)
        return catalog, problems


def _alarm_spec(table: Mapping, label: str, problems: list[str]) -> tuple[tuple[str, ...], str] | None:
    if "alarms" not in table and "alarm_prefix" not in table:
        return None
    names = table.get("alarms", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and ALARM_RE.match(n) for n in names):
        problems.append(f"{label}: alarms must be a list of CloudWatch alarm names")
        names = []
    prefix = table.get("alarm_prefix", "")
    if not isinstance(prefix, str) or (prefix and not ALARM_RE.match(prefix)):
        problems.append(f"{label}: alarm_prefix must be the start of CloudWatch alarm names")
        prefix = ""
    return tuple(names), prefix


def _inside(path: str) -> bool:
    p = PurePosixPath(path)
    return bool(path) and not p.is_absolute() and ".." not in p.parts and "\\" not in path


def _check_order(services: Mapping[str, ServiceEntry], source: str) -> list[str]:
    problems = []
    for s in services.values():
        for dep in s.after:
            if dep not in services:
                problems.append(f"{source}: {s.name} deploys after `{dep}`, which is not a service here")
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = path[path.index(n):] + [n]
            problems.append(f"{source}: the deploy order has a cycle: {' → '.join(cycle)}")
            return
        state[n] = 1
        for dep in services[n].after:
            if dep in services:
                visit(dep, path + [n])
        state[n] = 2

    for name in services:
        visit(name, [])
    return problems
