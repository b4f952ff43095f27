"""DKIM signing (PRODUCT §8): keys in Haraka's layout, signed once when mail is queued."""
