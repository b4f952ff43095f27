"""The *mix* workload: traffic as a sending platform sees it (issue 26).

A few large mailbox providers and a long tail of domains with one or two messages
each: ``messages`` recipients drawn from ``domains`` domains by a Zipf distribution
(weight of the k-th domain 1/k^s), each message of a size drawn between ``min_size``
and ``max_size``, all from a fixed seed so that every relay of a run, and every run,
gets the same traffic.  The domains are hosted behind ``sites`` receiving addresses
(domain m<i>.sink.test at site i mod sites), as providers host many domains behind
the same MX hosts.

Besides messages/s, CPU and sessions, it is measured from each message's 250 at the
relay to its arrival at the sink: the p50 and p99 of that time for the messages of
one-message domains, which wait behind the large ones' backlog in a relay that does
not serve destinations fairly.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path


def domain_name(i: int) -> str:
    return f"m{i}.sink.test"


def site_address(site: int) -> str:
    """The sink address of site ``site`` (127.0.3.1, 127.0.3.2, ...: apart from the
    200-domain workload's 127.0.1.x and 127.0.2.x)."""
    return f"127.0.{3 + site // 250}.{1 + site % 250}"


@dataclass(frozen=True)
class Mix:
    messages: int = 20_000
    domains: int = 1_000
    sites: int = 30
    s: float = 1.1
    min_size: int = 4 * 1024
    max_size: int = 64 * 1024
    seed: int = 26

    @cached_property
    def plan(self) -> list[tuple[int, int]]:
        """(domain index, size) of message n, for every n."""
        rng = random.Random(self.seed)
        weights = [1 / (k + 1) ** self.s for k in range(self.domains)]
        picked = rng.choices(range(self.domains), weights=weights, k=self.messages)
        return [(d, rng.randint(self.min_size, self.max_size)) for d in picked]

    def recipient(self, n: int) -> str:
        return f"r{n}@{domain_name(self.plan[n][0])}"

    def write(self, path: Path) -> Path:
        """The plan as the injector reads it: one ``<recipient> <size>`` line per message."""
        path.write_text("".join(f"{self.recipient(n)} {size}\n" for n, (_, size) in enumerate(self.plan)))
        return path

    def site_of(self, domain: int) -> str:
        return site_address(domain % self.sites)

    def sink_hosts(self) -> str:
        return ",".join(site_address(s) for s in range(min(self.sites, self.domains)))

    def routes(self, port: int) -> dict[str, str]:
        """Each domain's nexthop (Postfix's transport_maps): its site's address."""
        used = sorted({d for d, _ in self.plan})
        return {domain_name(d): f"[{self.site_of(d)}]:{port}" for d in used}

    def lonely(self) -> list[int]:
        """The messages that are their domain's only one."""
        count = Counter(d for d, _ in self.plan)
        return [n for n, (d, _) in enumerate(self.plan) if count[d] == 1]

    def described(self) -> str:
        count = Counter(d for d, _ in self.plan)
        top = count.most_common(1)[0][1] if count else 0
        return (f"{self.messages:,} messages of {self.min_size // 1024}-{self.max_size // 1024} KiB to "
                f"{len(count)} of {self.domains:,} domains (Zipf s = {self.s}; the largest gets "
                f"{top * 100 / max(self.messages, 1):.0f} %, {len(self.lonely())} domains one message) "
                f"behind {self.sites} sites")


def lonely_latency(mix: Mix, queued: dict[int, float], arrived: dict[str, float]) -> dict[str, float | None]:
    """p50 and p99 seconds from 250 to arrival of the one-message domains' messages."""
    waits = sorted(arrived[mix.recipient(n)] - queued[n] for n in mix.lonely()
                   if n in queued and mix.recipient(n) in arrived)
    if not waits:
        return {"lonely_p50_s": None, "lonely_p99_s": None}
    p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))]
    return {"lonely_p50_s": statistics.median(waits), "lonely_p99_s": p99}
