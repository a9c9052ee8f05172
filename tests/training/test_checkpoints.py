"""Checkpoints are read as data: a truncated or tampered file is a clear error."""
from __future__ import annotations

import io
import pickle

import pytest
import torch

from training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from courier_spark.core.errors import CheckpointError


def _save(d):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return save_checkpoint(str(d), 5, model, opt, [(5, 1.25, 0.5)], [])


def test_round_trip_with_optimizer_state(tmp_path):
    path = _save(tmp_path)
    assert latest_checkpoint(str(tmp_path)) == path
    state = load_checkpoint(path)
    assert state["step"] == 5 and state["checkpoint_steps"] == [5] and list(state["history"][0]) == [5, 1.25, 0.5]
    assert set(state["model"]) == {"weight", "bias"} and state["optimizer"]["state"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = _save(tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read as a courier checkpoint"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran on load",))


def test_checkpoint_with_code_is_refused_and_runs_nothing(tmp_path, capsys):
    path = tmp_path / "step_0000005.pt"
    buf = io.BytesIO()
    torch.save({"step": 5, "model": {}, "optimizer": {}, "history": [], "checkpoint_steps": [5],
                "payload": _Evil()}, buf, pickle_module=pickle)
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="truncated or tampered"):
        load_checkpoint(str(path))
    assert "code ran on load" not in capsys.readouterr().out


def test_other_pickles_are_not_checkpoints(tmp_path):
    path = tmp_path / "step_0000001.pt"
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="not a courier checkpoint"):
        load_checkpoint(str(path))
