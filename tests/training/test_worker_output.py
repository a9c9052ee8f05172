"""Forwarding of Horovod workers' output to the driver."""
from __future__ import annotations

import io

from training.train import _TeeLines


def test_worker_lines_reach_a_block_buffered_driver_log_at_once():
    # spark-submit > job.log: the driver's stdout is a file, block-buffered;
    # Horovod writes worker lines to it and never flushes.
    raw = io.BytesIO()
    log = io.TextIOWrapper(raw, encoding="utf-8", line_buffering=False, write_through=False)
    tee = _TeeLines(log)
    tee.write("[0]<stdout>:[courier train] courier step 10/200 loss 9.4")
    assert raw.getvalue() == b""                     # a partial line may wait
    tee.write("397\n[0]<stdout>:[courier train] cour")
    assert raw.getvalue().decode().endswith("courier step 10/200 loss 9.4397\n[0]<stdout>:[courier train] cour")
    assert list(tee.lines) == ["[0]<stdout>:[courier train] courier step 10/200 loss 9.4397"]
