"""The suppression list: addresses not to be mailed again."""
