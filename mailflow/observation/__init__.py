"""What a running mailflow tells about itself: counters, samples, the metrics endpoint,
process titles."""
