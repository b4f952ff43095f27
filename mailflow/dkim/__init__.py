"""DKIM signing: keys in Haraka's layout, signed once when mail is queued."""
