"""What both sides put on the wire and must agree on, with no queue or network code in it."""
