"""The submission server's own replies, named once (aiosmtpd's ``statuscodes.py`` is the model).

The server answers with these and the tests assert them, so a reply's text is
written in one place.  Each carries its RFC 3463 enhanced status; the ones
with ``{}`` take a detail (``.format``).
"""

from __future__ import annotations


class SMTPStatus:
    # MAIL, RCPT
    SENDER_OK = "250 2.1.0 OK"
    RECIPIENT_OK = "250 2.1.5 OK"
    MALFORMED_SENDER = "553 5.1.7 Malformed sender address: {}"
    MALFORMED_RECIPIENT = "553 5.1.3 Malformed recipient address: {}"
    NOT_UTF8 = "553 {} Malformed address: not UTF-8"
    NEEDS_SMTPUTF8 = "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter"
    RELAY_DENIED = "550 5.7.1 Relaying denied"
    SUPPRESSED = ("550 5.7.1 <{}>: recipient is on the suppression list (an earlier message to it "
                  "was refused as unknown); not sent")
    TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
    # EHLO, HELO
    BAD_HOST_NAME = "501 5.5.4 Invalid host name in EHLO/HELO"
    # DATA
    QUEUED = "250 2.0.0 Message Queued ({})"
    NOT_QUEUED = "451 4.3.0 {}; try again later"
    TOO_BIG = "552 5.3.4 Message too big for system"
    SIZE_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
    LINE_TOO_LONG = "500 5.5.6 Line too long (RFC 5321 4.5.3.1.6)"
    # the connection
    STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
    TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
    TOO_MANY_FROM_CLIENT = "421 4.7.0 Too many connections from your address"
    TOO_MANY_AUTH_FAILURES = "421 4.7.0 Too many authentication failures"


#: aiosmtpd's literal replies -> the same refusal with its RFC 3463 code.
AIOSMTPD_REPLIES = {
    "552 Error: Too much mail data": SMTPStatus.TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": SMTPStatus.SIZE_TOO_BIG,
    "530 Must issue a STARTTLS command first": SMTPStatus.STARTTLS_FIRST,
    "500 Line too long (see RFC5321 4.5.3.1.6)": SMTPStatus.LINE_TOO_LONG,
}
