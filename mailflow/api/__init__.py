"""The HTTP injection API: applications queue mail over HTTP as they would over SMTP.

Owner side (it writes the queue directory), served by the submission processes beside the
SMTP listener: ``keys`` (who may call it), ``requests`` (what a request says, checked),
``compose`` (a message built from fields and templates), ``idempotency`` (a retried request
queues nothing twice), ``server`` (the endpoints), ``openapi`` (their description).
"""
