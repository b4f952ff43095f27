"""Delivery webhooks (PRODUCT §8): kept events POSTed to the application, signed, retried."""
