"""``mailflow smtpd``: the submission listener (aiosmtpd)."""
