"""DNSSEC for tests: a root zone signed at test time with dnspython, served by Debian's ``nsd``
and validated by Debian's ``unbound``, both on 127.0.0.1 at spare ports.

The root zone holds every test name, signed (NSEC chain included), plus one delegation
to an unsigned child zone (``insecure.test``, no DS: provably insecure).  Names in
``bogus`` get a tampered RRSIG, so unbound answers SERVFAIL for them.  unbound trusts
only this root's key, given as its trust anchor; it reaches nsd by stub zones.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

from harness.dnsserver import free_port

INSECURE = "insecure.test."


def available() -> str | None:
    """None when nsd and unbound are installed, else what is missing."""
    missing = [tool for tool in ("nsd", "unbound") if shutil.which(tool) is None and
               not Path(f"/usr/sbin/{tool}").exists()]
    return ", ".join(missing) or None


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def signed_root(records: list[str], bogus: list[tuple[str, str]], key: ec.EllipticCurvePrivateKey
                ) -> tuple[dns.zone.Zone, str]:
    """The root zone with ``records`` (zone file lines), signed; and its trust anchor line."""
    text = "\n".join([
        "$TTL 300",
        ". SOA ns. hostmaster. 1 3600 600 86400 300",
        ". NS ns.",
        "ns. A 127.0.0.1",
        f"{INSECURE} NS ns.{INSECURE}",
        f"ns.{INSECURE} A 127.0.0.1",
        *records]) + "\n"
    zone = dns.zone.from_text(text, origin=dns.name.root, relativize=False)
    dnskey = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256,
                                    flags=257)  # ZONE | SEP: one key for all
    now = int(time.time())
    dns.dnssec.sign_zone(zone, keys=[(key, dnskey)], inception=now - 3600, expiration=now + 7 * 86400)
    for name, rdtype in bogus:
        node = zone.get_node(dns.name.from_text(name))
        assert node is not None, name
        covers = dns.rdatatype.from_text(rdtype)
        rrsigs = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, covers)
        assert rrsigs is not None, name
        tampered = [r.replace(signature=bytes([r.signature[0] ^ 0xFF]) + r.signature[1:]) for r in rrsigs]
        rrsigs.clear()
        for r in tampered:
            rrsigs.add(r)
    return zone, f". 300 IN DNSKEY {dnskey.to_text()}"


class SignedDNS:
    """nsd (authoritative) and unbound (validating) for one test module."""

    def __init__(self, workdir: Path, records: list[str], insecure: list[str],
                 bogus: list[tuple[str, str]] | None = None):
        self.workdir = workdir
        self.records, self.insecure, self.bogus = records, insecure, bogus or []
        self.nsd_port = self.unbound_port = 0
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def resolver(self) -> str:
        return f"127.0.0.1:{self.unbound_port}"

    @property
    def authoritative(self) -> str:
        return f"127.0.0.1:{self.nsd_port}"

    def start(self) -> SignedDNS:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        zone, anchor = signed_root(self.records, self.bogus, ec.generate_private_key(ec.SECP256R1()))
        zone.to_file(str(d / "root.zone"), relativize=False)
        (d / "insecure.zone").write_text("\n".join([
            "$TTL 300", f"{INSECURE} SOA ns.{INSECURE} hostmaster. 1 3600 600 86400 300",
            f"{INSECURE} NS ns.{INSECURE}", f"ns.{INSECURE} A 127.0.0.1", *self.insecure]) + "\n")
        (d / "root.key").write_text(anchor + "\n")
        self.nsd_port, self.unbound_port = free_port(), free_port()
        (d / "nsd.conf").write_text(f"""server:
    ip-address: 127.0.0.1@{self.nsd_port}
    port: {self.nsd_port}
    username: ""
    chroot: ""
    zonesdir: "{d}"
    pidfile: "{d}/nsd.pid"
    database: ""
    zonelistfile: "{d}/zone.list"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    logfile: "{d}/nsd.log"
    server-count: 1
    do-ip6: no
remote-control:
    control-enable: no
zone:
    name: "."
    zonefile: "root.zone"
zone:
    name: "{INSECURE}"
    zonefile: "insecure.zone"
""")
        (d / "unbound.conf").write_text(f"""server:
    interface: 127.0.0.1
    port: {self.unbound_port}
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    logfile: "{d}/unbound.log"
    use-syslog: no
    verbosity: 1
    val-log-level: 2
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    trust-anchor-file: "{d}/root.key"
    module-config: "validator iterator"
    qname-minimisation: no
    aggressive-nsec: no
    harden-referral-path: no
    # test. is one of unbound's built-in empty zones (RFC 6761): serve it from nsd instead
    local-zone: "test." nodefault
remote-control:
    control-enable: no
stub-zone:
    name: "."
    stub-addr: 127.0.0.1@{self.nsd_port}
stub-zone:
    name: "{INSECURE}"
    stub-addr: 127.0.0.1@{self.nsd_port}
""")
        for argv in ([_tool("nsd"), "-d", "-c", str(d / "nsd.conf")],
                     [_tool("unbound"), "-d", "-c", str(d / "unbound.conf")]):
            log = open(d / f"{Path(argv[0]).name}.out", "wb")  # noqa: SIM115 - the child keeps it
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        self._wait_until_secure()
        return self

    def _wait_until_secure(self, timeout: float = 30.0) -> None:
        """Until unbound answers the root SOA with the AD bit (nsd loaded, anchor accepted)."""
        deadline = time.monotonic() + timeout
        query = dns.message.make_query(".", "SOA", want_dnssec=True)
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            try:
                answer = dns.query.udp(query, "127.0.0.1", port=self.unbound_port, timeout=1)
                if answer.flags & dns.flags.AD:
                    return
            except (dns.exception.Timeout, OSError):
                pass
            time.sleep(0.2)
        logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in self.workdir.glob("*.out"))
        logs += "\n".join(p.read_text(errors="replace")[-2000:] for p in self.workdir.glob("*.log"))
        self.stop()
        raise RuntimeError(f"nsd/unbound did not come up validating:\n{logs}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.procs = []

    def __enter__(self) -> SignedDNS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
