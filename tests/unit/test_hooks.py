from concurrent.futures import ThreadPoolExecutor

from mailflow import hooks
from mailflow.codes import CONT, DELAY, DENY, DENYSOFT, OK

calls: list[str] = []


def cont(**kwargs):
    calls.append("cont")


def deny(**kwargs):
    calls.append("deny")
    return DENY, "no"


def ok(**kwargs):
    calls.append("ok")
    return OK


def broken(**kwargs):
    calls.append("broken")
    raise RuntimeError("plugin bug")


def not_a_code(**kwargs):
    return "yes please"


def _with(signal, *receivers):
    for r in receivers:
        signal.connect(r)
    return lambda: [signal.disconnect(r) for r in receivers]


def test_first_non_cont_decides_but_every_receiver_runs():
    calls.clear()
    undo = _with(hooks.get_mx, cont, deny, ok)
    try:
        answer = hooks.decide(hooks.get_mx, hmail=None, domain="x")
    finally:
        undo()
    assert answer.code is DENY and answer.value == "no"
    assert calls == ["cont", "deny", "ok"]


def test_no_receivers_means_cont():
    assert hooks.decide(hooks.bounce, hmail=None, error=None).code is CONT


def test_raising_receiver_counts_as_denysoft_by_default():
    undo = _with(hooks.send_email, broken, ok)
    try:
        answer = hooks.decide(hooks.send_email, hmail=None)
    finally:
        undo()
    assert answer.code is DENYSOFT
    assert "plugin bug" in answer.value


def test_raising_receiver_can_count_as_cont():
    undo = _with(hooks.delivered, broken)
    try:
        assert hooks.decide(hooks.delivered, raised=CONT, hmail=None).code is CONT
    finally:
        undo()


def test_nonsense_answer_is_treated_like_an_error():
    undo = _with(hooks.deferred, not_a_code)
    try:
        assert hooks.decide(hooks.deferred, hmail=None, delay=1, err="x").code is DENYSOFT
    finally:
        undo()


def delay(**kwargs):
    return DELAY, 30


def test_tuple_answers_carry_a_value():
    undo = _with(hooks.send_email, delay)
    try:
        answer = hooks.decide(hooks.send_email, hmail=None)
    finally:
        undo()
    assert (answer.code, answer.value) == (DELAY, 30)


def test_every_product_hook_is_a_celery_signal():
    from celery.utils.dispatch import Signal

    for name in ("connect", "queue_outbound", "send_email", "get_mx", "deferred", "bounce",
                 "delivered"):
        assert isinstance(getattr(hooks, name), Signal)


class NoThreads(ThreadPoolExecutor):
    """An executor that fails the test if anything is handed to it."""

    def submit(self, *args, **kwargs):
        raise AssertionError("no receiver, yet a thread was used")


def test_off_loop_with_no_receivers_answers_cont_without_a_thread():
    import asyncio

    async def go():
        asyncio.get_running_loop().set_default_executor(NoThreads())
        return await hooks.decide_off_loop(hooks.connect, connection=None)

    assert asyncio.run(go()).code is CONT


def test_off_loop_receivers_run_in_a_thread_not_on_the_event_loop():
    import asyncio
    import threading

    seen = []

    def where(**kwargs):
        seen.append(threading.current_thread())
        return DENY, "go away"

    async def go():
        return await hooks.decide_off_loop(hooks.connect, connection=None)

    undo = _with(hooks.connect, where)
    try:
        answer = asyncio.run(go())
    finally:
        undo()
    assert answer.code is DENY and answer.value == "go away"
    assert seen and seen[0] is not threading.main_thread()


def exits(**kwargs):
    calls.append("exits")
    raise SystemExit(3)


def interrupts(**kwargs):
    calls.append("interrupts")
    raise KeyboardInterrupt


def generator_exit(**kwargs):
    raise GeneratorExit


def test_a_receiver_that_exits_is_a_plugin_error_and_the_rest_still_run(caplog):
    """SystemExit, KeyboardInterrupt, GeneratorExit: Celery's send lets them through, which
    stopped a worker's thread (its entries were left in their claim) or the listener
    (issue 23 item 6)."""
    for receiver in (exits, interrupts, generator_exit):
        calls.clear()
        undo = _with(hooks.get_mx, receiver, cont)
        try:
            answer = hooks.decide(hooks.get_mx, hmail=None, domain="x")
        finally:
            undo()
        assert answer.code is DENYSOFT and answer.failed
        assert "plugin error in get_mx" in answer.value and receiver.__name__ in answer.value
        assert calls[-1] == "cont"
    logged = [r for r in caplog.records if "raised" in r.getMessage()]
    assert len(logged) == 3 and all("test_hooks" in r.getMessage() for r in logged)


def test_a_plain_denysoft_is_not_a_failure():
    undo = _with(hooks.get_mx, deny)
    try:
        assert not hooks.decide(hooks.get_mx, hmail=None, domain="x").failed
    finally:
        undo()
