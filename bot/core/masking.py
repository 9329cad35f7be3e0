"""Mask secrets in text that leaves the process (Slack, sqlite, logs, the terminal).

Secrets are masked where they arise (``source.py`` never puts a URL's credentials in a message) and
again here, on every way out, by value and by shape: a token printed by a tool we never told about it
is still caught.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MASK = "***"
# The credentials part of a URL: https://user:token@host/… (group 1 the scheme, group 2 the user-info).
# Every repetition is bounded, so masking a line costs time in proportion to its length whatever it holds
# (unbounded, "a.a.a.…" took quadratic time: each word boundary scanned to the end of the line).
URL_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]{0,31}://)([^/\s@]{1,512})@")
LINE_LIMIT = 8192  # output lines are cut to this many characters before anything else reads them
CUT = " … [line cut: "  # what follows a line's kept head: "N more characters]"
# Shapes of credentials that may show up in tool output even when we were never told the value.
# Each pattern's group "keep" (if any) is kept; the rest of the match is masked.
PATTERNS = [
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\b(?:IQoJb3JpZ2lu|FwoGZXIvYXdz)[0-9A-Za-z/+=]{20,}"),  # AWS session tokens (STS)
    re.compile(r"(?i)(?P<keep>aws_secret_access_key|aws_session_token|aws_security_token)(\s*[=:]\s*)\S+"),
    re.compile(r"\bxox[abposre]-[0-9A-Za-z-]{8,}"),  # Slack tokens
    re.compile(r"\bxapp-[0-9A-Za-z-]{8,}"),
    re.compile(r"\b(?:ghp|gho|ghs|ghu|ghr)_[0-9A-Za-z]{20,}"),  # GitHub tokens
    re.compile(r"\bgithub_pat_[0-9A-Za-z_]{20,}"),
    re.compile(r"\bnpm_[0-9A-Za-z]{30,}"),  # npm automation and publish tokens
    re.compile(r"(?P<keep>_authToken\s*=\s*)\S+"),  # .npmrc lines
    re.compile(r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----.*?(?:-----END [A-Z ]{0,40}PRIVATE KEY-----|\Z)", re.S),
]
PEM_BEGIN = re.compile(r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----")
PEM_END = re.compile(r"-----END [A-Z ]{0,40}PRIVATE KEY-----")


def cut_line(head: str, dropped: int) -> str:
    """A line whose rest was not read: its head, and how much was dropped."""
    return f"{head}{CUT}{dropped} more characters]" if dropped else head


def shorten(line: str, limit: int) -> str:
    """``line`` in at most about ``limit`` characters, still saying how much of it is not there."""
    if len(line) <= limit:
        return line
    head, sep, tail = line.partition(CUT)
    dropped = int(tail.split(" ", 1)[0]) if sep and tail.split(" ", 1)[0].isdigit() else 0
    keep = max(0, limit - 60)
    return cut_line(head[:keep], dropped + len(head) - keep)


def _replace(match: re.Match) -> str:
    keep = match.groupdict().get("keep")
    if keep is None:
        return MASK
    if match.re.groups >= 2 and match.group(2) is not None and match.group(2) != keep:
        return keep + match.group(2) + MASK
    return keep + MASK


class Masker:
    def __init__(self, secrets: Iterable[str] = ()):
        # Longest first, so a secret containing another is masked whole. Very short values would
        # mask ordinary words; those are left to the patterns.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        if CUT in text:  # a secret the cut went through: its beginning is still a secret
            head, sep, tail = text.partition(CUT)
            for secret in self.secrets:
                start = next((len(head) - n for n in range(len(secret) - 1, 5, -1) if head.endswith(secret[:n])),
                             None)
                if start is not None:
                    head = head[:start] + MASK
            text = head + sep + tail
        text = URL_USERINFO.sub(r"\1" + MASK + "@", text)
        for pattern in PATTERNS:
            text = pattern.sub(_replace, text)
        return text

    def lines(self) -> LineMasker:
        """A masker for a stream of lines, which also hides the body of a private key printed over
        several lines."""
        return LineMasker(self)


class LineMasker:
    def __init__(self, masker: Masker):
        self.mask = masker
        self.in_key = False

    def __call__(self, line: str) -> str:
        if self.in_key:
            if PEM_END.search(line):
                self.in_key = False
            return MASK
        if PEM_BEGIN.search(line) and not PEM_END.search(line):
            self.in_key = True
            return self.mask(line[: PEM_BEGIN.search(line).start()]) + MASK
        return self.mask(line)


class MaskingFilter(logging.Filter):
    """Masks every log record that passes through a handler: the last way out for a secret."""

    def __init__(self, masker: Masker):
        super().__init__()
        self.mask = masker

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        masked = self.mask(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        record.msg, record.args = masked, None
        return True


def mask_logs(masker: Masker) -> None:
    """Install the masking filter on the root logger's handlers (call after logging is configured)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter(masker))
