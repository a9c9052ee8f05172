"""Global-negatives loss on 2 real workers (Horovod on Spark, TorchDistributor)
equals one process on the union batch."""
from __future__ import annotations

import pytest

from training.gradcheck import (distributed_gradients, make_batch, max_abs_diff,
                                single_process_gradients)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference():
    batch = make_batch(8, seed=3)
    return batch, single_process_gradients(batch)


@pytest.mark.parametrize("backend", ["horovod", "torch_distributor"])
def test_two_worker_gradients_equal_single_process(spark, reference, backend):
    batch, (ref_loss, ref_grads) = reference
    loss, grads = distributed_gradients(batch, backend, num_proc=2)
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    assert max_abs_diff(grads, ref_grads) < 1e-5
    # the check is sensitive: dropping the cross-worker negatives changes grads
    half = {k: v[:4] for k, v in batch.items()}
    _, local_only = single_process_gradients(half)
    assert max_abs_diff(local_only, ref_grads) > 1e-4
