"""The per-stage ``index.json``: what was built, what is live, what is bad, whether CI is frozen.

Pure data and rules, no I/O: ``artifacts.py`` reads and writes it in S3.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from bot.core.errors import UserError

SCHEMA_VERSION = 1
HEX_RE = re.compile(r"^[0-9a-f]+$")
MIN_PREFIX = 4
COMMIT_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # sha1, or sha256 repositories
BUILD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
NOTICE_RE = re.compile(r"^[CGD][A-Z0-9-]{1,30}:[0-9]{1,12}\.[0-9]{1,8}$")  # a Slack channel id and message ts
MAX_PACKAGE_BYTES = 10 * 1024**3  # no Serverless package is near this; a larger size is a lie
MAX_TEXT = 2000  # author, message, reasons: longer values are cut, never trusted to be short


class IndexFormatError(Exception):
    """index.json cannot be understood; it is never overwritten in that case."""


class RefError(UserError):
    """A ref names no build, or more than one. ``candidates`` are what the user can pick from."""

    def __init__(self, message: str, candidates: list[Artifact] | None = None):
        super().__init__(message)
        self.candidates = candidates or []


@dataclass
class Mark:
    """Who did something to a stage or a build, why and when (a freeze, a bad mark)."""

    by: str
    reason: str
    at: float


@dataclass
class Artifact:
    commit: str
    build_id: str
    key: str
    sha256: str
    size: int
    created: float
    author: str = ""
    message: str = ""
    bad: Mark | None = None

    @property
    def short(self) -> str:
        return self.commit[:7]

    @property
    def ident(self) -> tuple[str, str]:
        return (self.commit, self.build_id)

    def label(self) -> str:
        return f"{self.short} (build {self.build_id})"


@dataclass
class LiveRecord:
    """A build going live: by a CI deploy or by a rollback."""

    commit: str
    build_id: str
    at: float
    by: str = ""
    via: str = "deploy"
    notice: str = ""  # "CHANNEL:TS" of the Slack message that announced it, edited when it stops being live

    @property
    def ident(self) -> tuple[str, str]:
        return (self.commit, self.build_id)

    @property
    def notice_at(self) -> tuple[str, str] | None:
        """The announcing message as (channel, ts), or None."""
        return tuple(self.notice.split(":", 1)) if NOTICE_RE.match(self.notice) else None  # type: ignore[return-value]


@dataclass
class InUse:
    """A build a running job depends on; prune leaves it alone wherever prune runs."""

    commit: str
    build_id: str
    job: str
    since: float


@dataclass
class StageIndex:
    service: str
    stage: str
    artifacts: list[Artifact] = field(default_factory=list)  # newest first
    history: list[LiveRecord] = field(default_factory=list)  # newest first; history[0] is live
    freeze: Mark | None = None
    in_use: list[InUse] = field(default_factory=list)
    schema: int = SCHEMA_VERSION
    # Entries that failed validation on read: (section, the raw entry, why). Never resolved or
    # deployed, and written back unchanged so nothing is lost.
    refused: list[tuple[str, dict, str]] = field(default_factory=list)

    # -- reading ---------------------------------------------------------------------------------

    @property
    def live(self) -> LiveRecord | None:
        return self.history[0] if self.history else None

    def find(self, commit: str, build_id: str) -> Artifact | None:
        for a in self.artifacts:
            if a.commit == commit and a.build_id == build_id:
                return a
        return None

    def live_artifact(self) -> Artifact | None:
        live = self.live
        return self.find(*live.ident) if live else None

    def is_live(self, artifact: Artifact) -> bool:
        return self.live is not None and self.live.ident == artifact.ident

    def previous(self) -> tuple[Artifact, str] | None:
        """The last known-good build before the live one, and why it was chosen.

        A build that was live before and is not marked bad comes first; when the history holds
        none (CI never recorded deploys), the newest older build that is not marked bad.
        """
        live = self.live
        if live is None:
            return None
        for record in self.history[1:]:
            if record.commit == live.commit:
                continue
            candidate = self.find(*record.ident)
            if candidate is not None and candidate.bad is None:
                return candidate, "was live before the current build"
        live_art = self.find(*live.ident)
        if live_art is None:
            return None
        older = self.artifacts[self.artifacts.index(live_art) + 1 :]
        for candidate in older:
            if candidate.bad is None and candidate.commit != live.commit:
                return candidate, "the newest older build not marked bad (never recorded as live)"
        return None

    def resolve(self, ref: str) -> Artifact:
        """A full SHA, a unique SHA prefix (4+ hex), a build id, or ``previous``."""
        ref = ref.strip().replace("`", "'")[:200]  # quoted in messages: it must not close their code spans
        if not ref:
            raise RefError("Give a build: a commit SHA (4+ characters), a build id, or `previous`.")
        if ref.lower() == "previous":
            if self.live is None:
                raise RefError(
                    f"Stage {self.stage} has no live build recorded, so `previous` means nothing yet. "
                    "Name a build by commit SHA or build id."
                    + self._what_we_have()
                )
            found = self.previous()
            if found is None:
                raise RefError(
                    f"Stage {self.stage} has no good build older than the live one "
                    f"({self.live.commit[:7]}, build {self.live.build_id})." + self._what_we_have()
                )
            return found[0]

        lowered = ref.lower()
        by_build = [a for a in self.artifacts if a.build_id == ref]
        by_commit: list[Artifact] = []
        if HEX_RE.match(lowered):
            if len(lowered) < MIN_PREFIX and not by_build:
                raise RefError(
                    f"No build id of stage {self.stage} is `{ref}`, and `{ref}` is too short to be a commit: "
                    f"give at least {MIN_PREFIX} characters of the SHA." + self._what_we_have()
                )
            if len(lowered) >= MIN_PREFIX:
                by_commit = [a for a in self.artifacts if a.commit.startswith(lowered)]

        matches = by_build + [a for a in by_commit if a not in by_build]
        if not matches:
            raise RefError(f"No build of stage {self.stage} matches `{ref}`." + self._what_we_have())
        if len(by_build) == 1 and not [a for a in by_commit if a.commit != by_build[0].commit]:
            return by_build[0]
        commits = {a.commit for a in matches}
        if len(commits) == 1 and not by_build:
            return matches[0]  # several builds of one commit: the newest (list is newest first)
        raise RefError(
            f"`{ref}` matches {len(matches)} builds of stage {self.stage}; "
            "give more characters of the SHA, or the build id:",
            candidates=matches[:10],
        )

    def _what_we_have(self) -> str:
        if not self.artifacts:
            return f" Stage {self.stage} has no builds yet: CI publishes them with `rollback-bot publish`."
        recent = ", ".join(a.label() for a in self.artifacts[:5])
        more = f" and {len(self.artifacts) - 5} more" if len(self.artifacts) > 5 else ""
        return f" Recent builds: {recent}{more}."

    # -- changing --------------------------------------------------------------------------------

    def add(self, artifact: Artifact) -> None:
        """Insert keeping newest first (publishers on other machines may land out of order)."""
        pos = 0
        while pos < len(self.artifacts) and self.artifacts[pos].created > artifact.created:
            pos += 1
        self.artifacts.insert(pos, artifact)

    def set_live(self, artifact: Artifact, by: str, at: float, via: str = "deploy") -> bool:
        """Record ``artifact`` as live. Returns False when it already was (nothing changes)."""
        if self.live is not None and self.live.ident == artifact.ident:
            return False
        self.history.insert(0, LiveRecord(artifact.commit, artifact.build_id, at, by, via))
        artifact.bad = None  # a successful deploy of a build clears its bad mark
        return True

    def note_notice(self, commit: str, build_id: str, at: float, channel: str, ts: str) -> bool:
        """Remember which message announced a build going live (the record of that moment)."""
        notice = f"{channel}:{ts}"
        if not NOTICE_RE.match(notice):
            return False
        for record in self.history:
            if record.ident == (commit, build_id) and record.at == at:
                record.notice = notice
                return True
        return False

    def is_forward(self, target: Artifact) -> bool:
        """Whether moving to ``target`` is a roll forward: it was published after the live build."""
        live = self.live_artifact()
        if live is None or live.ident == target.ident:
            return False
        if self.find(*target.ident) is None:
            return target.created > live.created
        return self.artifacts.index(self.find(*target.ident)) < self.artifacts.index(live)

    def _newer_than(self, art: Artifact, than: Artifact) -> bool:
        if art in self.artifacts and than in self.artifacts:
            return self.artifacts.index(art) < self.artifacts.index(than)
        return art.created > than.created

    def record_rollback(self, target: Artifact, by: str, at: float, reason: str) -> list[Artifact]:
        """After a successful rollback: the target is live, every build newer than it that went live
        after it is marked bad, and CI is frozen. Returns the builds newly marked bad."""
        current = self.find(*target.ident)
        if current is None:  # pruned meanwhile: put the entry back, it is live now
            current = Artifact(**{**vars(target), "bad": None})
            self.add(current)
        last_live = next((h.at for h in self.history if h.ident == current.ident), None)
        since = last_live if last_live is not None else current.created
        marked = []
        for record in self.history:
            if record.at <= since or record.ident == current.ident:
                continue
            art = self.find(*record.ident)
            # An older build that went live later (a previous rollback to it) is not what we undo.
            if art is not None and art.bad is None and art not in marked and self._newer_than(art, current):
                art.bad = Mark(by, reason, at)
                marked.append(art)
        self.set_live(current, by, at, via="rollback")
        self.freeze = Mark(by, reason, at)
        return marked

    def record_forward(self, target: Artifact, by: str, at: float, unfreeze: bool = False) -> Mark | None:
        """After a successful roll forward: the target is live and its own bad mark cleared; nothing
        else is marked. The freeze stays unless the person asked to lift it. Returns a lifted freeze."""
        current = self.find(*target.ident)
        if current is None:
            current = Artifact(**{**vars(target), "bad": None})
            self.add(current)
        self.set_live(current, by, at, via="forward")
        current.bad = None
        lifted = None
        if unfreeze:
            lifted, self.freeze = self.freeze, None
        return lifted

    def bad_mark_for(self, commit: str) -> Mark | None:
        """The bad mark of a commit, named in full or by a prefix of 7+ characters (as CI may)."""
        commit = commit.strip().lower()
        if len(commit) < 7:
            return None
        for art in self.artifacts:
            if art.commit.startswith(commit) and art.bad is not None:
                return art.bad
        return None

    # -- (de)serialising -------------------------------------------------------------------------

    def to_json(self) -> bytes:
        doc = asdict(self)
        refused = doc.pop("refused")
        for section, raw, _why in refused:  # written back as found: refusing to use is not deleting
            doc[section].append(raw)
        doc["live"] = asdict(self.live) if self.live else None  # for people and scripts reading it
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str,
                  key_for: Callable[[str, str], str] | None = None) -> StageIndex:
        """Parse an index, validating every entry: ``key_for(commit, build_id)`` is the layout path
        an artifact must have. An entry that fails is refused (kept aside, never deployed)."""
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexFormatError(
                f"{where} is not valid JSON ({exc}). It was left untouched; restore it from the bucket's "
                "versions or fix it by hand before publishing again."
            ) from exc
        if not isinstance(doc, dict) or "schema" not in doc:
            raise IndexFormatError(f"{where} is not a rollback-bot index (no schema field); it was left untouched.")
        if doc["schema"] > SCHEMA_VERSION:
            raise IndexFormatError(
                f"{where} was written by a newer rollback-bot (schema {doc['schema']}, this one knows "
                f"{SCHEMA_VERSION}); upgrade rollback-bot here."
            )
        try:
            refused: list[tuple[str, dict, str]] = []

            def each(section: str, make):
                items = doc.get(section, [])
                if not isinstance(items, list):
                    raise TypeError(f"{section} is not a list")
                for item in items:
                    try:
                        yield make(item)
                    except EntryError as exc:
                        refused.append((section, item, str(exc)))

            index = cls(
                service=_text(doc["service"], "service"),
                stage=_text(doc["stage"], "stage"),
                artifacts=list(each("artifacts", lambda a: _artifact(a, key_for))),
                history=list(each("history", _live_record)),
                freeze=_mark(doc["freeze"]) if doc.get("freeze") else None,
                in_use=list(each("in_use", _in_use)),
                schema=doc["schema"],
            )
            index.refused = refused
            return index
        except (KeyError, TypeError, EntryError) as exc:
            raise IndexFormatError(f"{where} is missing a field or has a wrong one ({exc}); it was left "
                                   "untouched.") from exc


class EntryError(ValueError):
    """One entry of the index is not what rollback-bot writes."""


def _build(cls, data: dict):
    if not isinstance(data, dict):
        raise EntryError(f"expected an object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise EntryError(str(exc)) from exc


def _text(value, what: str, limit: int = MAX_TEXT) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise EntryError(f"{what} is not text")
    return value[:limit]


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EntryError(f"{what} is not a number")
    return float(value)


def _ident(commit, build_id) -> tuple[str, str]:
    if not isinstance(commit, str) or not COMMIT_RE.match(commit):
        raise EntryError(f"commit {str(commit)[:80]!r} is not a full lowercase SHA")
    if not isinstance(build_id, str) or not BUILD_RE.match(build_id):
        raise EntryError(f"build id {str(build_id)[:80]!r} is not letters, digits, '.', '_' or '-'")
    return commit, build_id


def _mark(data) -> Mark:
    m = _build(Mark, data)
    return Mark(_text(m.by, "by", 200), _text(m.reason, "reason"), _number(m.at, "at"))


def _live_record(data) -> LiveRecord:
    r = _build(LiveRecord, data)
    _ident(r.commit, r.build_id)
    notice = r.notice if isinstance(r.notice, str) and NOTICE_RE.match(r.notice) else ""  # else: no edit, no harm
    return LiveRecord(r.commit, r.build_id, _number(r.at, "at"), _text(r.by, "by", 200), _text(r.via, "via", 20),
                      notice)


def _in_use(data) -> InUse:
    u = _build(InUse, data)
    _ident(u.commit, u.build_id)
    return InUse(u.commit, u.build_id, _text(u.job, "job", 40), _number(u.since, "since"))


def _artifact(data, key_for: Callable[[str, str], str] | None = None) -> Artifact:
    art = _build(Artifact, data)
    commit, build_id = _ident(art.commit, art.build_id)
    label = f"{commit[:7]} (build {build_id})"
    if key_for is not None and art.key != key_for(commit, build_id):
        raise EntryError(f"{label}: key {str(art.key)[:200]!r} is not this stage's layout path "
                         f"{key_for(commit, build_id)!r}")
    if not isinstance(art.sha256, str) or not SHA256_RE.match(art.sha256):
        raise EntryError(f"{label}: sha256 is not 64 hex characters")
    if isinstance(art.size, bool) or not isinstance(art.size, int) or not 0 < art.size <= MAX_PACKAGE_BYTES:
        raise EntryError(f"{label}: size {str(art.size)[:40]!r} is out of bounds")
    return Artifact(
        commit=commit, build_id=build_id, key=art.key, sha256=art.sha256, size=art.size,
        created=_number(art.created, "created"), author=_text(art.author, "author", 200),
        message=_text(art.message, "message"), bad=_mark(art.bad) if art.bad else None,
    )
