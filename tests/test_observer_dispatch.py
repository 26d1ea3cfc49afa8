"""MultiObserver forwards every fact, in order, to the observers that listen for it."""

from __future__ import annotations

from overlay.connection._observer import MultiObserver, Observer, TaskRoot
from overlay.connection._outcome import AttemptOutcome
from overlay.identity import NodeId

PEER = NodeId("ab" * 32)


class Recorder(Observer):
    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log

    def on_request_done(
        self, peer: NodeId, channel: str, seconds: float, outcome: AttemptOutcome
    ) -> None:
        self.log.append((self.name, f"done {channel} {outcome.name}"))

    def on_latency(self, peer: NodeId, rtt: float) -> None:
        self.log.append((self.name, f"latency {rtt}"))


def test_facts_reach_every_listening_observer_in_order() -> None:
    log: list[tuple[str, str]] = []
    multi = MultiObserver(Recorder("a", log), Observer(), Recorder("b", log))
    multi.on_request_done(PEER, "echo", 0.1, AttemptOutcome.OK)
    multi.on_latency(PEER, 0.2)
    multi.on_task_failed(TaskRoot.TIMER)  # nobody listens: a no-op
    assert log == [("a", "done echo OK"), ("b", "done echo OK"), ("a", "latency 0.2"),
                   ("b", "latency 0.2")]


def test_set_replaces_the_observers_and_a_nested_multi_observer_follows_its_own_set() -> None:
    log: list[tuple[str, str]] = []
    inner = MultiObserver()
    outer = MultiObserver(inner, Recorder("outer", log))
    inner.set(Recorder("inner", log))  # after the outer one bound its hooks
    outer.on_latency(PEER, 1.0)
    assert log == [("inner", "latency 1.0"), ("outer", "latency 1.0")]
    log.clear()
    outer.set()
    outer.on_latency(PEER, 2.0)
    assert log == []


def test_an_observer_instance_with_its_own_hook_attribute_is_called() -> None:
    seen: list[float] = []
    plain = Observer()
    plain.on_latency = lambda peer, rtt: seen.append(rtt)  # type: ignore[method-assign]
    MultiObserver(plain).on_latency(PEER, 0.5)
    assert seen == [0.5]
