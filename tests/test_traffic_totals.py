"""The node's traffic records add up field by field: counters and queue depths are summed, the
deepest queue is the maximum."""

from __future__ import annotations

from overlay.node._traffic import ChannelLoad, ChannelTraffic


def test_channel_traffic_adds_every_counter() -> None:
    total = ChannelTraffic(1, 2, 3, 4, 5) + ChannelTraffic(10, 20, 30, 40, 50)
    assert total == ChannelTraffic(11, 22, 33, 44, 55)
    assert ChannelTraffic() + total == total


def test_channel_load_sums_gauges_and_keeps_the_deepest_queue() -> None:
    total = ChannelLoad(queue_depth_sum=3, queue_depth_max=3, outbound_requests_in_flight=1,
                        inbound_requests_in_flight=2)
    total += ChannelLoad(queue_depth_sum=7, queue_depth_max=7, outbound_requests_in_flight=4,
                         inbound_requests_in_flight=0)
    assert total == ChannelLoad(queue_depth_sum=10, queue_depth_max=7,
                                outbound_requests_in_flight=5, inbound_requests_in_flight=2)
