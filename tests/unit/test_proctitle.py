"""The process title's queue counts list the queue: a large backlog refreshes them less often."""

from mailflow.observation import proctitle


def test_refresh_pause_is_the_interval_while_counting_is_cheap():
    assert proctitle.pause_after(0.001) == proctitle.INTERVAL


def test_refresh_never_costs_more_than_its_share_of_a_core():
    # 100,000 entries take about 0.4 s to count: the next count waits 20 s, not 5
    for cost in (0.2, 0.4, 2.0):
        pause = proctitle.pause_after(cost)
        assert cost / pause <= 1 / proctitle.COST_SHARE
