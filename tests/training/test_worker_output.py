"""Forwarding of Horovod workers' output to the driver."""
from __future__ import annotations

import io

from training.launch import _TeeLines


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


def test_progress_tail_prints_lines_while_the_writer_is_still_running(tmp_path):
    import time

    from training.launch import ProgressTail
    from training.train import report_progress
    path = tmp_path / "progress.log"
    path.write_text("old run line\n")                 # a previous run's lines are not replayed
    out = io.StringIO()
    with ProgressTail(str(path), dst=out, interval_s=0.05):
        report_progress("[courier train] courier step 1/3", str(tmp_path), "horovod")
        with open(path, "a") as fh:
            fh.write("[courier train] courier step 2/3")  # half a line: held back until complete
        deadline = time.time() + 5
        while time.time() < deadline and "step 1/3" not in out.getvalue():
            time.sleep(0.02)
        seen_while_running = "step 1/3" in out.getvalue()
        assert "step 2/3" not in out.getvalue()
        with open(path, "a") as fh:
            fh.write(" loss 1.0\n[courier train] courier step 3/3")  # the last line lacks its newline
    assert seen_while_running
    assert out.getvalue() == ("[courier train] courier step 1/3\n[courier train] courier step 2/3 loss 1.0\n"
                              "[courier train] courier step 3/3\n")


def test_progress_goes_to_stderr_without_horovod(tmp_path, capsys):
    from training.train import report_progress
    report_progress("[courier train] courier step 1/3", str(tmp_path), "local")
    assert capsys.readouterr().err == "[courier train] courier step 1/3\n"
    assert not (tmp_path / "progress.log").exists()


def test_horovod_stays_on_loopback_for_local_masters(monkeypatch):
    from training.launch import horovod_nics
    monkeypatch.delenv("SPARK_LOCAL_IP", raising=False)
    assert horovod_nics("local[2]") == {"lo"}
    assert horovod_nics("spark://10.1.2.3:7077") is None
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    assert horovod_nics("spark://127.0.0.1:7077") == {"lo"}
    assert horovod_nics("local[2]", ["eth1", " ib0"]) == {"eth1", "ib0"}   # train.horovod_nics


def test_torch_distributor_progress_goes_to_the_shared_progress_file(tmp_path, capsys):
    # its ranks may run on executors: the driver tails the file on the shared root
    from training.train import report_progress
    report_progress("[courier train] courier step 1/3", str(tmp_path), "torch_distributor")
    assert (tmp_path / "progress.log").read_text() == "[courier train] courier step 1/3\n"
    assert capsys.readouterr().err == ""


def test_horovod_not_installed_is_one_clear_error(monkeypatch):
    import sys

    import pytest

    from courier_spark.core.errors import CourierError
    from training.launch import run_distributed
    monkeypatch.setitem(sys.modules, "horovod.spark", None)   # as if scripts/horovod.sh never ran
    with pytest.raises(CourierError, match=r"train.backend=horovod needs Horovod.*bash scripts/horovod.sh"):
        run_distributed(lambda backend: None, (), "horovod", 2)
