"""What authenticating a broker message costs: mailflow's HMAC against Celery's ``security``
serializer (X.509, RSA-2048 signatures), per message, sign and check together.

    python -m bench.signing

Bodies as the pipeline publishes them: a batch (names only), a route, and parcels of
4 KiB and 4 MiB.  Both are measured on the same bodies in the same run; the figures are
CPU time per message (``time.process_time``), the median of five runs.
"""

from __future__ import annotations

import base64
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trustme
from celery.security.certificate import Certificate, CertStore
from celery.security.key import PrivateKey
from celery.security.serialization import SecureSerializer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailflow.runtime.authentic import body_bytes  # noqa: E402
from mailflow.wire import signing  # noqa: E402

NAME = "1796530225679_0_1796530225679_0a1b2c3d4e5f.1_example.com"
HEADERS = {"task": "mailflow.transmit", "id": "5c1f4d1e-7a3b-4f0e-9a1d-2b3c4d5e6f70", "eta": None,
           "expires": None, "retries": 0, "argsrepr": "[...]", "kwargsrepr": "{}", "shadow": None}


def bodies() -> dict[str, object]:
    batch = {"owner": "vm-1a2b3c4d", "claim": "0" * 32, "names": [NAME] * 50, "domain": "example.com"}
    route = {**batch, "mx": [{"exchange": "mx1.example.com", "priority": 10, "port": 25}], "bind": None,
             "helo": None}

    def parcel(size: int) -> dict[str, object]:
        letter = {"name": NAME, "mail_from": "a@example.org", "rcpt_to": ["b@example.com"],
                  "message": base64.b64encode(b"x" * size).decode()}
        return {**route, "names": [NAME], "letters": [letter], "issued_ms": 0, "lease_ms": 300000,
                "wait_ms": 0}

    return {"batch of 50": [[batch], {}, {}], "route of 50": [[route], {}, {}],
            "parcel 4 KiB": [[parcel(4096)], {}, {}], "parcel 4 MiB": [[parcel(4 * 1024 * 1024)], {}, {}]}


def per_message(work: Callable[[], object], seconds: float = 0.5) -> float:
    """CPU seconds per call, the median of five runs of about ``seconds`` each."""
    runs = []
    for _ in range(5):
        count, start = 0, time.process_time()
        while time.process_time() - start < seconds / 5:
            work()
            count += 1
        runs.append((time.process_time() - start) / count)
    return statistics.median(runs)


def main() -> None:
    key = b"k" * 32
    ca = trustme.CA(key_type=trustme.KeyType.RSA)  # Celery signs with RSA keys only
    cert = ca.issue_cert("worker.example", key_type=trustme.KeyType.RSA)
    secure = SecureSerializer(key=PrivateKey(cert.private_key_pem.bytes()),
                              cert=Certificate(cert.cert_chain_pems[0].bytes()),
                              cert_store=CertStore(), digest="sha256", serializer="json")
    secure._cert_store.add_cert(Certificate(cert.cert_chain_pems[0].bytes()))
    print(f"{'body':<14} {'bytes':>9} {'HMAC (µs)':>11} {'X.509 (µs)':>11}")
    for name, body in bodies().items():
        raw = body_bytes(body, "json")

        def hmac_both(raw: bytes = raw, body: object = body) -> None:
            data = body_bytes(body, "json")  # the publisher serializes once more to sign
            mac = signing.task_mac(key, HEADERS, "mailflow.owner.vm-1a2b3c4d", data)
            signing.task_authentic(key, {**HEADERS, signing.HEADER: mac}, "mailflow.owner.vm-1a2b3c4d", raw)

        def x509_both(body: object = body) -> None:
            secure.deserialize(secure.serialize(body))

        print(f"{name:<14} {len(raw):>9} {per_message(hmac_both) * 1e6:>11.1f} "
              f"{per_message(x509_both) * 1e6:>11.1f}")


if __name__ == "__main__":
    main()
