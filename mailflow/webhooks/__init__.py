"""Delivery webhooks: kept events POSTed to the application, signed, retried."""
