"""Tracker on synthetic moving, crossing, vanishing and reappearing objects (no ROS)."""
import numpy as np
import pytest
import torch

from seg_ros.core.inference.instances import InstanceSegmenter
from seg_ros.core.inference.tracking import MAX_ID, Tracker, box_iou
from seg_ros.core.models.registry import load_instance_model

MS = 1_000_000  # ns


def box(cx, cy, s=40.0):
    return [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]


def test_box_iou():
    a = np.array([box(50, 50)])
    assert box_iou(a, a)[0, 0] == pytest.approx(1.0)
    assert box_iou(a, np.array([box(50 + 40, 50)]))[0, 0] == 0.0
    assert box_iou(a, np.array([box(60, 50)]))[0, 0] == pytest.approx(30 / 50)
    assert box_iou(np.zeros((0, 4)), a).shape == (0, 1)


def test_moving_objects_keep_their_ids():
    tr = Tracker(iou_threshold=0.3, timeout_s=1.0)
    first = tr.update([box(50, 50), box(200, 80)], [1, 2], 0).ids
    assert sorted(first.tolist()) == [1, 2]
    for t in range(1, 20):  # 5 px per frame to the right and down
        ids = tr.update([box(50 + 5 * t, 50), box(200, 80 + 5 * t)], [1, 2], t * 33 * MS).ids
        assert ids.tolist() == first.tolist()
    # order of the detections does not matter
    ids = tr.update([box(200, 80 + 100), box(50 + 100, 50)], [2, 1], 20 * 33 * MS).ids
    assert ids.tolist() == first[::-1].tolist()


def test_crossing_objects_of_different_classes_do_not_swap():
    tr = Tracker(iou_threshold=0.1, timeout_s=1.0)
    a, b = tr.update([box(0, 50), box(100, 50)], [1, 2], 0).ids
    for t in range(1, 11):  # they meet at x=50 at t=5 and pass each other
        ids = tr.update([box(10 * t, 50), box(100 - 10 * t, 50)], [1, 2], t * 33 * MS).ids
        assert ids.tolist() == [a, b]


def test_occlusion_shorter_than_timeout_keeps_the_id_longer_gets_a_new_one():
    tr = Tracker(iou_threshold=0.3, timeout_s=0.5)
    (bottle,) = tr.update([box(100, 100)], [3], 0).ids
    tr.update([], [], 200 * MS)              # hidden by the arm
    tr.update([], [], 400 * MS)
    assert tr.update([box(102, 100)], [3], 500 * MS).ids.tolist() == [bottle]
    tr.update([], [], 800 * MS)
    (again,) = tr.update([box(104, 100)], [3], 1_100 * MS).ids  # 0.6 s unseen > 0.5
    assert again != bottle and len(tr) == 1


def test_superseded_frames_do_not_age_tracks():
    # only stamps matter: a gap in the frames handed to the tracker is not time
    tr = Tracker(timeout_s=1.0)
    (a,) = tr.update([box(10, 10)], [0], 0).ids
    assert tr.update([box(11, 10)], [0], 900 * MS).ids.tolist() == [a]


def test_ids_in_a_frame_are_distinct_and_new_objects_get_unused_ids():
    tr = Tracker(iou_threshold=0.3)
    rng = np.random.default_rng(0)
    for t in range(30):
        n = int(rng.integers(0, 12))
        centres = rng.uniform(0, 600, (n, 2))
        ids = tr.update([box(x, y, 30) for x, y in centres], rng.integers(0, 3, n),
                        t * 40 * MS).ids
        assert len(set(ids.tolist())) == n and all(1 <= i <= MAX_ID for i in ids)


def test_wrap_around_skips_live_ids():
    tr = Tracker(timeout_s=10.0)
    tr._next_id = MAX_ID - 1
    first = tr.update([box(10, 10), box(300, 10)], [0, 0], 0).ids.tolist()
    assert first == [MAX_ID - 1, MAX_ID]
    (low,) = tr.update([box(10, 10), box(300, 10), box(600, 10)], [0, 0, 0],
                       1 * MS).ids[2:].tolist()
    assert low == 1
    # ids 2.. are free; make MAX_ID-1 the next candidate again while it is still alive
    tr._next_id = MAX_ID - 1
    ids = tr.update([box(10, 10), box(300, 10), box(600, 10), box(900, 10)], [0, 0, 0, 0],
                    2 * MS).ids.tolist()
    assert ids[:3] == [MAX_ID - 1, MAX_ID, 1] and ids[3] == 2  # live ones skipped


def test_backwards_stamp_resets():
    tr = Tracker()
    (a,) = tr.update([box(10, 10)], [0], 5_000 * MS).ids
    upd = tr.update([box(10, 10)], [0], 1_000 * MS)  # bag loop
    assert upd.reset and upd.ids.tolist() != [a] and len(tr) == 1
    assert not tr.update([box(10, 10)], [0], 1_100 * MS).reset


def test_bad_parameters_refused():
    with pytest.raises(ValueError):
        Tracker(iou_threshold=0.0)
    with pytest.raises(ValueError):
        Tracker(timeout_s=0.0)


def test_segmenter_publishes_track_ids_in_the_id_map(tmp_path):
    """The id map's pixels equal the track ids of the detections, frame after frame."""
    from helpers import make_instance_weights, synthetic_image
    weights = make_instance_weights(tmp_path / 'w.pt')
    loaded = load_instance_model('maskrcnn_resnet50_fpn', str(weights), 4, [], 'cpu',
                                 min_size=128, max_size=160, score_threshold=0.6)
    seg = InstanceSegmenter(loaded, 'cpu', score_threshold=0.6)
    tr = Tracker()
    tr._next_id = 500  # so track ids differ from 1..N
    x = torch.from_numpy(synthetic_image(96, 128, seed=1)).permute(2, 0, 1)[None] / 255
    first = seg(x, tracker=tr, stamp_ns=0)
    assert len(first) >= 2
    plain = seg(x)
    for k, tid in enumerate(first.ids):
        assert np.array_equal(first.id_map == tid, plain.id_map == k + 1)
    again = seg(x, want_overlay=True, tracker=tr, stamp_ns=33 * MS)
    assert again.ids.tolist() == first.ids.tolist()
    assert again.overlay is not None


def test_phase_correlation_finds_the_shift():
    from seg_ros.core.inference.tracking import estimate_shift

    from helpers import synthetic_image
    grey = synthetic_image(120, 160, seed=3).mean(-1)
    moved = np.zeros_like(grey)
    moved[5:, 12:] = grey[:-5, :-12]
    assert estimate_shift(grey, moved) == (5.0, 12.0)
    assert estimate_shift(grey, grey) == (0.0, 0.0)
    noise = np.random.default_rng(0).uniform(size=grey.shape)
    assert estimate_shift(grey, noise) is None  # no reliable peak: no compensation


def test_camera_motion_is_compensated():
    from helpers import synthetic_image
    img = synthetic_image(120, 160, seed=3).mean(-1)
    moved = np.zeros_like(img)
    moved[:, 30:] = img[:, :-30]
    # small boxes moving 30 px: no overlap at all without compensation
    tr = Tracker(iou_threshold=0.3)
    ids = tr.update([box(40, 40, 20), box(100, 80, 20)], [1, 1], 0, img).ids
    again = tr.update([box(70, 40, 20), box(130, 80, 20)], [1, 1], 33 * MS, moved).ids
    assert again.tolist() == ids.tolist() and tr.last_shift == (0.0, 30.0)
    plain = Tracker(iou_threshold=0.3)
    ids = plain.update([box(40, 40, 20), box(100, 80, 20)], [1, 1], 0).ids
    assert not set(plain.update([box(70, 40, 20), box(130, 80, 20)], [1, 1],
                                33 * MS).ids.tolist()) & set(ids.tolist())


def test_an_occluded_track_moves_with_the_camera():
    from helpers import synthetic_image
    img = synthetic_image(120, 200, seed=4).mean(-1)

    def panned(dx):  # the scene moved dx pixels right (zero-filled where it came from)
        out = np.zeros_like(img)
        out[:, dx:] = img[:, :img.shape[1] - dx]
        return out

    tr = Tracker(iou_threshold=0.3)
    first = tr.update([box(30, 40, 20), box(30, 90, 20)], [1, 1], 0, panned(0)).ids
    # the camera pans 12 px a frame; the second object is occluded for two frames
    tr.update([box(42, 40, 20)], [1], 33 * MS, panned(12))
    tr.update([box(54, 40, 20)], [1], 66 * MS, panned(24))
    back = tr.update([box(66, 40, 20), box(66, 90, 20)], [1, 1], 99 * MS, panned(36)).ids
    assert back.tolist() == first.tolist()
