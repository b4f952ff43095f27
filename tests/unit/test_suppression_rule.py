"""Which permanent failures put a recipient on the suppression list: the receiver's word only
(mailflow/suppress/store.py; issue 24 item 3)."""

from __future__ import annotations

import pytest

from mailflow.errors import Reply, local_reply
from mailflow.suppress.store import suppresses


@pytest.mark.parametrize("reply,listed", [
    (Reply(550, "5.1.1 no such user", "RCPT"), True),
    (Reply(550, "5.1.10 recipient has a null MX", "RCPT"), True),  # the receiver says so
    (Reply(554, "5.1.1 gone", "DATA"), True),
    (Reply(550, "5.7.1 refused by policy", "RCPT"), False),
    (Reply(550, "no such user here", "RCPT"), False),  # no enhanced status
    (Reply(550, "5.1.1 gone", "EHLO"), False),  # not about one mailbox
    (Reply(451, "4.1.1 try later", "RCPT"), False),
    # mailflow's own DNS conclusions: a broken resolver answers NXDOMAIN for everything
    (local_reply("5.1.2", "NXDOMAIN for example.com"), False),
    (local_reply("5.1.10", "null MX"), False),
    (Reply(550, "5.1.2 get_mx refused delivery"), False),
])
def test_only_a_remote_5_1_x_refusal_of_a_recipient_suppresses(reply, listed):
    assert suppresses(reply) is listed


@pytest.mark.parametrize("reply,cls,listed", [
    (Reply(550, "no such user here", "RCPT"), "InvalidRecipient", True),  # the class decides
    (Reply(550, "5.1.1 no such user", "RCPT"), "InvalidRecipient", True),
    (Reply(550, "5.7.1 refused by policy", "RCPT"), "PolicyRelated", False),
    (Reply(552, "5.2.2 mailbox full", "RCPT"), "QuotaIssues", False),
    (Reply(550, "5.1.1 gone", "EHLO"), "InvalidRecipient", False),  # not about one mailbox
    (local_reply("5.1.2", "domain does not exist"), "BadDomain", False),  # ours: never
])
def test_with_classes_the_class_decides_for_the_receivers_own_refusals(reply, cls, listed):
    assert suppresses(reply, cls, frozenset({"InvalidRecipient", "BadDomain"})) is listed
