"""Destinations found slow are remembered for a while, and a long tail of them is no leak."""

from mailflow.pipeline import transmit


def test_known_slow_destinations_forget_the_expired_past_the_bound(monkeypatch):
    monkeypatch.setattr(transmit, "_KNOWN_SLOW", {})
    monkeypatch.setattr(transmit, "KNOWN_SLOW_KEPT", 3)
    for n in range(3):
        transmit._remember_slow(f"old{n}.test", now=0.0)  # expired by t = KNOWN_SLOW_FOR
    transmit._remember_slow("fresh.test", now=transmit.KNOWN_SLOW_FOR + 1)
    assert set(transmit._KNOWN_SLOW) == {"fresh.test"}
    transmit._remember_slow("also.test", now=transmit.KNOWN_SLOW_FOR + 2)
    assert set(transmit._KNOWN_SLOW) == {"fresh.test", "also.test"}  # under the bound: kept
