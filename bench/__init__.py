"""mailflow benchmarks (``make bench``): print figures, never assert timings."""
