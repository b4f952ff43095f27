"""Real replies of the large mailbox providers and of common MTAs, each with where it was
published, and the class mailflow must give it."""

from __future__ import annotations

GMAIL = "https://support.google.com/a/answer/3726730"
MICROSOFT = ("https://learn.microsoft.com/exchange/mail-flow-best-practices/"
             "non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online")
YAHOO = "https://senders.yahooinc.com/smtp-error-codes/"
APPLE = "https://support.apple.com/en-us/102322"
RFC3463 = "https://www.rfc-editor.org/rfc/rfc3463"
POSTFIX = "Postfix's own replies (smtpd, local, virtual)"
EXIM = ("Exim's own replies (smtp_accept_max_per_host), "
        "https://www.exim.org/exim-html-current/doc/html/spec_html/ch-main_configuration.html")

#: (reply as sent, expected class, source)
REPLIES: list[tuple[str, str, str]] = [
    ("421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your "
     "IP address. To protect our users from spam, mail sent from your IP address has been temporarily "
     "rate limited.", "RateLimited", GMAIL),
    ("450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional "
     "messages from being delivered.", "RateLimited", GMAIL),
    ("550 5.1.1 The email account that you tried to reach does not exist.", "InvalidRecipient", GMAIL),
    ("552 5.2.2 The email account that you tried to reach is over quota.", "QuotaIssues", GMAIL),
    ("550 5.2.1 The email account that you tried to reach is disabled.", "InactiveMailbox", GMAIL),
    ("552 5.3.4 Your message exceeded Google's message size limits.", "MessageTooLarge", GMAIL),
    ("550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy.",
     "AuthenticationFailed", GMAIL),
    ("550 5.7.27 The sender address does not pass SPF.", "AuthenticationFailed", GMAIL),
    ("550 5.7.25 The IP address sending this message does not have a PTR record setup.",
     "PolicyRelated", GMAIL),
    ("550 5.7.1 Our system has detected that this message is likely unsolicited mail.",
     "SpamContent", GMAIL),
    ("552 5.7.0 This message was blocked because its content presents a potential security issue "
     "(virus).", "VirusDetected", GMAIL),
    ("530 5.7.0 Must issue a STARTTLS command first.", "TLSRequired", GMAIL),
    ("550 5.7.606 Access denied, banned sending IP [192.0.2.10].", "ReputationBlock", MICROSOFT),
    ("550 5.7.1 Service unavailable, Client host [192.0.2.10] blocked using Spamhaus.",
     "ReputationBlock", MICROSOFT),
    ("451 4.7.500 Server busy. Please try again later from [192.0.2.10].", "RateLimited", MICROSOFT),
    ("550 5.4.1 Recipient address rejected: Access denied.", "InvalidRecipient", MICROSOFT),
    ("550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "InvalidRecipient", MICROSOFT),
    ("554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException", "QuotaIssues",
     MICROSOFT),
    ("421 4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected volume or user "
     "complaints", "RateLimited", YAHOO),
    ("554 5.7.9 Message not accepted for policy reasons.", "PolicyRelated", YAHOO),
    ("553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.10, because the ip is in "
     "Spamhaus's list", "ReputationBlock", YAHOO),
    ("421 4.7.0 [TSS09] All messages from 192.0.2.10 will be permanently deferred; Retrying will NOT "
     "succeed.", "ReputationBlock", YAHOO),
    ("554 5.7.1 [CS01] Message rejected due to local policy.", "PolicyRelated", APPLE),
    ("550 5.1.1 <x@example.net>: Recipient address rejected: User unknown in virtual mailbox table",
     "InvalidRecipient", POSTFIX),
    ("452 4.2.2 Mailbox full", "QuotaIssues", POSTFIX),
    ("421 4.7.0 too many connections from your host", "TooManyConnections", POSTFIX),
    ("421 Too many concurrent SMTP connections from this IP address; please try again later.",
     "TooManyConnections", EXIM),
    ("550 5.1.2 Host or domain name not found", "BadDomain", RFC3463),
    ("554 5.5.1 Error: no valid recipients", "ProtocolError", RFC3463),
    ("451 4.3.0 Temporary local problem", "TransientFailure", RFC3463),
    ("554 5.7.1 Rejected: 192.0.2.10 is a known spam source", "SpamBlock", POSTFIX),
    ("550 Requested action not taken", "Uncategorized", RFC3463),
]
