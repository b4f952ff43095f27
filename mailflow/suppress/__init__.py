"""The suppression list (PRODUCT §8): addresses not to be mailed again."""
