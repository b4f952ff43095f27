"""The delivery steps, one module per Celery task of ``tasks/``: what each step does.

A step takes its typed payload (``mailflow.wire.payloads``), works with the queue
(owner side) and the network (relay side), and returns what the next step
needs; the task in ``tasks/`` hands that on by name.
"""
