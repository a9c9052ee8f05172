"""Horovod's launcher asks whether MPI / Gloo were built by forking a child
from the driver, which by then runs the JVM gateway's threads (a fork there
once deadlocked a pipeline). The launch path asks first, with the collector
off, so the launcher's own question is answered from Horovod's cache."""
from __future__ import annotations

import multiprocessing

import pytest

pytest.importorskip("horovod.spark")


def test_extension_checks_are_cached_before_the_launcher_asks(monkeypatch):
    import gc

    from horovod.common import util

    from training.launch import _horovod_ready
    gc.enable()
    _horovod_ready()
    assert gc.isenabled()   # switched back on

    def no_fork(*a, **k):
        raise AssertionError("Horovod forked to check its extensions")
    monkeypatch.setattr(multiprocessing, "get_context", no_fork)
    # What horovod.spark.run's run_controller asks (verbose = our verbose=0): no fork now.
    assert util.gloo_built(verbose=0) is True
    assert util.mpi_built(verbose=0) in (True, False)
