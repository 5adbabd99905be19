"""Diagnostics counters (no ROS)."""
from seg_ros.ros.stats import FrameStats


def test_rates_drops_and_percentiles():
    s = FrameStats(window=2.0)
    for i in range(10):
        s.on_received(now=100.0 + i * 0.1)
    for i in range(4):
        s.on_processed(0.01 * (i + 1), 0.05, now=100.0 + i * 0.25)
    s.on_processed(0.5, -3.0, now=101.0)  # a stamp from the future (clock reset) is not used
    assert s.on_dropped('bad_step') == 1 and s.on_dropped('bad_step') == 2
    snap = s.snapshot(now=101.0)
    assert snap['input_rate_hz'] == 10 / 2.0 and snap['processed_rate_hz'] == 5 / 2.0
    assert snap['drops'] == {'bad_step': 2}
    assert snap['received'] == 10 and snap['processed'] == 5
    assert abs(snap['processing_p50_s'] - 0.03) < 1e-9
    assert snap['stamp_to_publish_p50_s'] == 0.05
    later = s.snapshot(now=110.0)
    assert later['input_rate_hz'] == 0 and later['processed'] == 5
