"""The petastorm loader: an id frame plus each item image stored once, looked
up by id in the workers. Checked against decoding every slot directly."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from training.images import decode_image
from training.loader import (PAD_ID, DecodedItems, LoaderSpec, SampleLoader, load_decoded_items,
                             pretrain_training_frame, slot_images, split_heldout)

from .. import worlds

SIZE = 8


def png(rgb: tuple[int, int, int]) -> bytes:
    return worlds.png(rgb, SIZE)


@pytest.fixture
def data(spark):
    rng = np.random.default_rng(3)
    # items 1..30 with distinct colours; 7 has no image, 8 has bytes no decoder reads
    images = {i: png((i * 8, 255 - i * 8, (i * 37) % 256)) for i in range(1, 31)}
    images[7], images[8] = None, b"not an image"
    items = spark.createDataFrame(pd.DataFrame({"item_id": list(images), "image": list(images.values())}),
                                  "item_id long, image binary")
    rows = []
    for r in range(64):
        n_pv, n_h = int(rng.integers(1, 7)), int(rng.integers(0, 7))   # up to one more than the slots
        rows.append((f"r{r}", [int(x) for x in rng.integers(1, 31, n_pv)], [1] + [0] * (n_pv - 1),
                     [int(x) for x in rng.integers(1, 31, n_h)]))
    samples = spark.createDataFrame(rows, "request_id string, pv_item_ids array<long>, pv_labels array<int>, "
                                          "hist_item_ids array<long>")
    return items, samples, images, rows


def expected(images, rows, l_pv, l_click):
    """Sum of decoded images and count of valid slots, per slot kind, decoding every slot directly."""
    out = {}
    for kind, col, n in (("pv", 1, l_pv), ("hist", 3, l_click)):
        total, valid = np.zeros((3, SIZE, SIZE), np.float64), 0
        for r in rows:
            for item in r[col][:n]:
                arr = decode_image(images[item], SIZE)
                if arr is not None:
                    total += arr
                    valid += 1
        out[kind] = (total, valid)
    return out


def test_id_frame_pads_and_truncates(data):
    items, samples, images, rows = data
    got = {r["request_id"]: r for r in pretrain_training_frame(samples, 5, 5).collect()}
    for rid, pv, labels, hist in rows:
        g = got[rid]
        assert list(g["pv_ids"]) == (pv + [PAD_ID] * 5)[:5]
        assert list(g["hist_ids"]) == (hist + [PAD_ID] * 5)[:5]
        assert list(g["pv_labels"]) == (labels + [0] * 5)[:5]


def test_decoded_items_batch_looks_up_by_id_each_item_once():
    images = {3: png((10, 20, 30)), 9: png((200, 100, 0)), 8: b"not an image", 5: None}
    items = DecodedItems.decode(list(images), list(images.values()), SIZE)
    pv = np.array([[3, PAD_ID, 9], [9, 5, 3]])
    hist = np.array([[9, 8], [12345, 3]])       # 8 undecodable, 12345 unknown
    b = items.batch(pv, hist, np.array([[1, 0, 0], [0, 0, 1]]))
    assert b["pv_mask"].tolist() == [[True, False, True], [True, False, True]]
    assert b["hist_mask"].tolist() == [[True, False], [False, True]]
    assert b["items"].shape[0] == 2                       # items 3 and 9, each once
    full = slot_images(b)
    for kind, ids in (("pv", pv), ("hist", hist)):
        for (r, c), i in np.ndenumerate(ids):
            want = decode_image(images.get(int(i)), SIZE) if int(i) in images else None
            got = full[f"{kind}_images"][r, c].numpy()
            if want is None:
                assert (got == 0).all()
            else:
                np.testing.assert_array_equal(got, want)  # bit for bit: what the embed job decodes
    assert b["pv_labels"].tolist() == [[1, 0, 0], [0, 0, 1]]


def test_heldout_split_is_stable_disjoint_and_sized(spark):
    frame = spark.createDataFrame([(f"r{i}", i) for i in range(4000)], "request_id string, x int")
    train, held = split_heldout(frame, 0.1)
    tr = {r["request_id"] for r in train.collect()}
    he = {r["request_id"] for r in held.collect()}
    assert not tr & he and len(tr | he) == 4000
    assert 320 < len(he) < 480                               # 10 % +- 4 sd
    assert he == {r["request_id"] for r in split_heldout(frame, 0.1)[1].collect()}
    assert not split_heldout(frame, 0.0)[1].count()


def test_loader_batches_equal_direct_decoding(spark, data, tmp_path):
    items, samples, images, rows = data
    spec = LoaderSpec(l_pv=5, l_click=5, image_size=SIZE, batch_size=8)
    loader = SampleLoader.from_frame(pretrain_training_frame(samples, 5, 5), items, spec, str(tmp_path / "cache"))
    try:
        # every image once: the table holds one row per item that has bytes
        stored = load_decoded_items(loader.images_url, SIZE)
        assert stored.ids.tolist() == sorted(i for i, b in images.items() if b is not None)
        assert stored.valid.tolist() == [i != 8 for i in stored.ids]    # 8's bytes do not decode
        seen, got = 0, {"pv": [np.zeros((3, SIZE, SIZE)), 0], "hist": [np.zeros((3, SIZE, SIZE)), 0]}
        labels = 0
        for b in loader.batches(num_epochs=1, workers=1, seed=0):
            assert len(np.unique(b["items"].numpy().reshape(len(b["items"]), -1), axis=0)) == len(b["items"])
            b = slot_images(b)
            seen += b["pv_labels"].shape[0]
            labels += int(b["pv_labels"].sum())
            for kind in ("pv", "hist"):
                x, m = b[f"{kind}_images"].numpy(), b[f"{kind}_mask"].numpy()
                assert (x[~m] == 0).all()                       # masked slots are blank
                got[kind][0] += x.sum(axis=(0, 1))
                got[kind][1] += int(m.sum())
        assert seen == 64 and labels == 64                      # 8 full batches, one click per page
        want = expected(images, rows, 5, 5)
        for kind in ("pv", "hist"):
            assert got[kind][1] == want[kind][1], kind
            np.testing.assert_allclose(got[kind][0], want[kind][0], rtol=1e-5, atol=1e-3)
    finally:
        loader.delete()
    assert not (tmp_path / "cache").exists() or not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_finite_read_is_not_cut_short_when_the_ventilator_finishes_between_checks():
    """petastorm 0.13.1's thread pool, on the schedule that lost a one-epoch
    read in CI: the ventilator sends every item after the pool has counted
    its workers idle and before it asks whether ventilation completed."""
    from petastorm.workers_pool import EmptyResultError
    from petastorm.workers_pool.thread_pool import ThreadPool
    from petastorm.workers_pool.ventilator import Ventilator
    from petastorm.workers_pool.worker_base import WorkerBase

    from training.loader import guard_petastorm_end_of_read

    class Echo(WorkerBase):
        def process(self, value):
            self.publish_func(value)

    class SendsAllWhenAsked(Ventilator):
        """Sends nothing on start; sends all items the first time it is asked
        whether it has completed (the interleaving, made deterministic)."""
        def __init__(self, ventilate_fn, n):
            super().__init__(ventilate_fn)
            self.n, self.sent = n, False

        def start(self):
            pass

        def processed_item(self):
            pass

        def completed(self):
            if not self.sent:
                self.sent = True
                for i in range(self.n):
                    self._ventilate_fn(value=i)
            return True

        def stop(self):
            pass

    guard_petastorm_end_of_read()
    guard_petastorm_end_of_read()        # idempotent
    pool = ThreadPool(1)
    pool.start(Echo, None, ventilator=SendsAllWhenAsked(pool.ventilate, 4))
    got = []
    try:
        while True:
            got.append(pool.get_results())
    except EmptyResultError:
        pass
    finally:
        pool.stop()
        pool.join()
    assert sorted(got) == [0, 1, 2, 3]

