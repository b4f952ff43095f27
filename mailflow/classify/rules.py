"""Rules that give a reply its class: the user's ``classify.ini`` first, then the shipped set.

A rule matches on any of: the reply code (``421``, ``5xx``), the enhanced status code
(``5.1.1``, ``4.7.*``), a regular expression on the text (case-insensitive), the MX host
(a suffix).  The first rule that matches wins; a reply no rule speaks of is
``TransientFailure`` when temporary, else ``Uncategorized``.  mailflow's own replies carry
no code of three digits (code 0): their enhanced code says whether they are temporary.

Classifying is on every refusal's path: the rules are tried in order with their cheap
checks (code, enhanced) first.  The shipped rules' regular expressions are matched all at
once, in one pass over the text, by an RE2 set (it says which of them match; Python's re
would try them one after another, 30-80 us for a reply that only the last ones know); the
user's, tried before them, with Python's re.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import re2

from mailflow.classify.classes import CLASSES
from mailflow.config.files import ConfigError, read_ini, unknown
from mailflow.errors import Reply

KEYS = ("class", "code", "enhanced", "text", "mx")


@dataclass(frozen=True)
class Rule:
    name: str
    cls: str
    code: str | None = None  #: ``421``, or ``4xx``/``5xx``
    enhanced: str | None = None  #: ``5.1.1``, or a pattern: ``4.7.*``
    text: re.Pattern[str] | None = None
    mx: str | None = None  #: an MX host suffix, ``.google.com``

    def matches(self, code: str, enhanced: str, text: str, mx_host: str,
                text_hit: bool | None = None) -> bool:
        """``text_hit``: whether the text matches, when already known (the shipped rules'
        set), else it is searched here."""
        if self.code is not None and not (code == self.code or (
                self.code.endswith("xx") and code[:1] == self.code[0])):
            return False
        if self.enhanced is not None and not _glob(self.enhanced)(enhanced):
            return False
        if self.mx is not None:
            suffix, host = self.mx.lstrip("."), mx_host.lower().rstrip(".")
            if not (host == suffix or host.endswith("." + suffix)):
                return False
        if text_hit is not None:
            return text_hit
        return self.text is None or self.text.search(text) is not None


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> Callable[[str], object]:
    """An enhanced-code pattern (``4.7.*``, ``5.7.6[0-4]?``) as a compiled matcher."""
    return re.compile(fnmatch.translate(pattern)).match


def _r(name: str, cls: str, *, code: str | None = None, enhanced: str | None = None,
       text: str | None = None, mx: str | None = None) -> Rule:
    return Rule(name, cls, code, enhanced, re.compile(text, re.IGNORECASE) if text else None, mx)


#: Where the shipped rules come from, by the first word of their names.
SOURCES: dict[str, str] = {
    "gmail": "Gmail's SMTP error reference, https://support.google.com/a/answer/3726730",
    "microsoft": "Microsoft's NDRs in Exchange Online, https://learn.microsoft.com/exchange/"
                 "mail-flow-best-practices/non-delivery-reports-in-exchange-online/"
                 "non-delivery-reports-in-exchange-online",
    "yahoo": "Yahoo's SMTP error codes, https://senders.yahooinc.com/smtp-error-codes/",
    "apple": "Apple iCloud Mail's postmaster replies, https://support.apple.com/en-us/102322",
    "text": "replies across receivers (Postfix's, Exim's, Sendmail's wording), by what their text says",
    "rfc3463": "RFC 3463, Enhanced Mail System Status Codes",
    "rfc7372": "RFC 7372, Email Authentication Status Codes",
    "rfc7505": "RFC 7505, A \"Null MX\" No Service Resource Record",
    "rfc8689": "RFC 8689, SMTP Require TLS Option",
}


def source_of(rule: Rule) -> str:
    return SOURCES.get(rule.name.split("-")[0], "")


#: The shipped rules, in the order they are tried.
DEFAULT_RULES: tuple[Rule, ...] = (
    # Gmail's SMTP error reference, https://support.google.com/a/answer/3726730
    _r("gmail-rate", "RateLimited", enhanced="4.7.28"),  # "unusual rate of unsolicited mail"
    _r("gmail-receiving-rate", "RateLimited", enhanced="4.2.1", text=r"receiving mail at a rate"),
    _r("gmail-unauthenticated", "AuthenticationFailed", enhanced="[45].7.2[67]"),  # DMARC / SPF
    _r("gmail-ptr", "PolicyRelated", enhanced="[45].7.25"),  # no PTR record for the sending IP
    _r("gmail-likely-spam", "SpamContent", text=r"likely unsolicited mail|likely suspicious"),
    _r("gmail-disabled", "InactiveMailbox", enhanced="5.2.1", text=r"disabled|inactive"),
    # Microsoft's NDRs in Exchange Online, https://learn.microsoft.com/exchange/
    # mail-flow-best-practices/non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online
    _r("microsoft-banned-ip", "ReputationBlock", enhanced="5.7.6[0-4]?"),  # 5.7.606-649 banned IP
    _r("microsoft-block-list", "ReputationBlock", text=r"\bS3140\b|\bS3150\b|banned sending ip|"
       r"traffic not accepted from this ip"),
    _r("microsoft-busy", "RateLimited", enhanced="4.7.5[0-9][0-9]"),  # 451 4.7.500-599 server busy
    _r("microsoft-auth", "AuthenticationFailed", enhanced="5.7.5[01][0-9]",
       text=r"dmarc|dkim|spf|authenticat"),
    _r("microsoft-access-denied", "InvalidRecipient", enhanced="5.4.1", text=r"access denied"),
    # Yahoo's SMTP error codes, https://senders.yahooinc.com/smtp-error-codes/
    _r("yahoo-deferred", "RateLimited", text=r"\bTSS0[45]\b|unexpected volume or user complaints"),
    _r("yahoo-permanently-deferred", "ReputationBlock", text=r"\bTSS09\b|\bTS03\b|permanently deferred"),
    _r("yahoo-policy", "PolicyRelated", enhanced="5.7.9", text=r"policy reasons"),
    # Apple iCloud Mail's postmaster replies, https://support.apple.com/en-us/102322
    _r("apple-local-policy", "PolicyRelated", text=r"\[CS0\d\]|rejected due to local policy"),
    # Replies across receivers, by what their text says (Postfix's, Exim's, Sendmail's wording)
    _r("text-too-many-connections", "TooManyConnections",
       text=r"too many (concurrent |simultaneous |open )?(smtp )?(connections|sessions)|"
       r"connection (count|rate) limit"),  # Exim: "Too many concurrent SMTP connections from ..."
    _r("text-rate", "RateLimited", text=r"rate limit|too many (messages|mails|emails)|slow down|"
       r"sending (rate|too fast)|throttl"),
    _r("text-virus", "VirusDetected", text=r"\bvirus|malware|infected|dangerous (content|attachment)"),
    _r("text-blocklist", "ReputationBlock", text=r"block ?list|black ?list|blocked using|spamhaus|spamcop|"
       r"barracuda|\bs?urbl\b|\bdnsbl\b|\brbl\b|listed (at|on|in)|poor reputation|ip reputation|"
       r"\bbanned\b"),
    _r("text-auth", "AuthenticationFailed", text=r"\bdmarc\b|\bdkim\b|\bspf\b|not authenticated|"
       r"authentication (failed|required)"),
    _r("text-tls", "TLSRequired", text=r"starttls|tls (is )?required|must issue a starttls|encryption "
       r"required|requiretls"),
    _r("text-spam-sender", "SpamBlock", text=r"spam source|known spammer|sender (is |was )?"
       r"(blocked|rejected) as spam|sending spam"),
    _r("text-spam", "SpamContent", text=r"\bspam|unsolicited|\bjunk\b|content (rejected|filter)"),
    _r("text-quota", "QuotaIssues", text=r"quota|mailbox (is )?full|insufficient (storage|system storage)|"
       r"mailbox size limit"),
    _r("text-too-large", "MessageTooLarge", text=r"too (large|big)|size limit|message size|"
       r"exceeds (the )?(maximum|size)"),
    _r("text-inactive", "InactiveMailbox", code="5xx", text=r"\b(disabled|inactive|suspended|"
       r"deactivated|closed|no longer (active|available))\b"),
    _r("text-bad-domain", "BadDomain", code="5xx", text=r"domain( \S+)? (not found|does not exist)|host (or "
       r"domain name )?not found|no mx|null mx"),
    _r("text-unknown-user", "InvalidRecipient", code="5xx", text=r"user unknown|unknown user|no such "
       r"(user|mailbox|recipient)|mailbox (not found|unavailable|does not exist)|recipient (not found|"
       r"rejected|unknown|address rejected)|invalid (recipient|mailbox)|address rejected|does not exist"),
    # RFC 3463's enhanced status codes (and RFC 7372's for SPF and DKIM, RFC 7505's null MX,
    # RFC 8689's REQUIRETLS), for replies whose text said nothing the rules above know
    _r("rfc3463-bad-mailbox", "InvalidRecipient", enhanced="5.1.1"),
    _r("rfc3463-bad-domain", "BadDomain", enhanced="5.1.2"),
    _r("rfc3463-address-syntax", "ProtocolError", enhanced="[45].1.3"),
    _r("rfc3463-mailbox-moved", "InactiveMailbox", enhanced="5.1.6"),
    _r("rfc7505-null-mx", "BadDomain", enhanced="5.1.10"),
    _r("rfc3463-other-address", "InvalidRecipient", enhanced="5.1.*"),
    _r("rfc3463-mailbox-disabled", "InactiveMailbox", enhanced="[45].2.1"),
    _r("rfc3463-mailbox-full", "QuotaIssues", enhanced="[45].2.2"),
    _r("rfc3463-message-too-long", "MessageTooLarge", enhanced="[45].[23].[34]"),
    _r("rfc3463-no-answer", "ConnectionFailure", enhanced="[45].4.[127]"),
    _r("rfc3463-routing", "DNSFailure", enhanced="[45].4.[34]"),
    _r("rfc3463-congestion", "TransientFailure", enhanced="4.4.5"),
    _r("rfc3463-loop", "BadDomain", enhanced="5.4.6"),
    _r("rfc3463-protocol", "ProtocolError", enhanced="[45].5.*"),
    _r("rfc3463-content", "ProtocolError", enhanced="[45].6.*"),
    _r("rfc3463-crypto", "TLSRequired", enhanced="[45].7.5"),
    _r("rfc3463-encryption-needed", "TLSRequired", enhanced="[45].7.1[01]"),
    _r("rfc8689-requiretls", "TLSRequired", enhanced="5.7.30"),
    _r("rfc7372-auth", "AuthenticationFailed", enhanced="[45].7.2[0-4]"),
    _r("rfc3463-not-authorized", "PolicyRelated", enhanced="5.7.*"),
    _r("rfc3463-security", "TransientFailure", enhanced="4.7.*"),
)


def load(path: Path) -> tuple[Rule, ...]:
    """The user's rules of ``classify.ini`` (``[rule:NAME]`` sections), in file order."""
    ini = read_ini(path)
    found = []
    for section, keys in ini.sections.items():
        if section in ("main", "actions"):
            continue
        kind, sep, name = section.partition(":")
        line = ini.section_lines.get(section)
        if kind != "rule" or not sep or not name:
            raise ConfigError(path, line, f"[{section}]: a rule is [rule:NAME]")
        for key, raw in keys.items():
            if key not in KEYS:
                raise ConfigError(path, raw.line, unknown("key", key, KEYS))
        if "class" not in keys or keys["class"].text.strip() not in CLASSES:
            raise ConfigError(path, line, f"[{section}] needs class = one of {', '.join(CLASSES)}")
        code = keys["code"].text.strip().lower() if "code" in keys else None
        if code is not None and not re.fullmatch(r"[245](\d\d|xx)", code):
            raise ConfigError(path, keys["code"].line, f"code {code!r}: a reply code (421) or 4xx / 5xx")
        text = None
        if "text" in keys:
            try:
                text = re.compile(keys["text"].text, re.IGNORECASE)
            except re.error as exc:
                raise ConfigError(path, keys["text"].line,
                                  f"text is not a regular expression: {exc}") from None
        enhanced = keys["enhanced"].text.strip() if "enhanced" in keys else None
        if enhanced is not None and not re.fullmatch(r"[245]\.[0-9*\[\]-]+\.[0-9*\[\]-]+", enhanced):
            raise ConfigError(path, keys["enhanced"].line, f"enhanced {enhanced!r}: a status code such "
                              "as 5.1.1, or a pattern such as 4.7.*")
        found.append(Rule(name, keys["class"].text.strip(), code, enhanced, text,
                          keys["mx"].text.strip().lower() if "mx" in keys else None))
    return tuple(found)


class TextSet:
    """The shipped rules' regular expressions in one RE2 set: which of them a text matches,
    in one pass."""

    def __init__(self, rules: tuple[Rule, ...]):
        options = re2.Options()
        options.case_sensitive = False
        self._set = re2.Set.SearchSet(options)
        self._rule_of: list[int] = []  #: set index -> index in ``rules``
        for n, rule in enumerate(rules):
            if rule.text is not None:
                self._set.Add(rule.text.pattern)
                self._rule_of.append(n)
        self._set.Compile()

    def hits(self, text: str) -> frozenset[int]:
        """The indices (in the rules given) of the rules whose expression ``text`` matches."""
        found = self._set.Match(text)
        return frozenset(self._rule_of[i] for i in found) if found else frozenset()


_SHIPPED = TextSet(DEFAULT_RULES)


def classify(reply: Reply, mx_host: str = "", rules: tuple[Rule, ...] = ()) -> tuple[str, str]:
    """(class, rule name) of ``reply``: ``rules`` (the user's) first, then the shipped ones."""
    enhanced = reply.enhanced
    code = str(reply.code) if reply.code else f"{enhanced[0]}00"
    for rule in rules:
        if rule.matches(code, enhanced, reply.text, mx_host):
            return rule.cls, rule.name
    hits = _SHIPPED.hits(reply.text)
    for n, rule in enumerate(DEFAULT_RULES):
        if rule.matches(code, enhanced, reply.text, mx_host, rule.text is None or n in hits):
            return rule.cls, rule.name
    if code.startswith("4"):
        return "TransientFailure", "temporary"
    return "Uncategorized", "none"
