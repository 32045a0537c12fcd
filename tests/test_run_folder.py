"""The run-folder helpers both training commands share: checkpoints, resume, logs, signals."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from napari_pathsegdiff.engine.runs.run_folder import (
    flatten_optimizer,
    open_checkpoints,
    read_state,
    restore_optimizer,
    save_checkpoint,
    stop_on_signals,
    trim_log,
    write_json,
)


def _stepped_adam() -> tuple[torch.nn.Linear, torch.optim.Adam]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    return model, opt


def test_optimizer_state_round_trips_through_tensors_and_json(tmp_path):
    model, opt = _stepped_adam()
    tensors, meta = flatten_optimizer(opt)
    assert sorted(tensors) == ["0.exp_avg", "0.exp_avg_sq", "0.step", "1.exp_avg", "1.exp_avg_sq", "1.step"]
    write_json(tmp_path / "meta.json", meta)
    fresh = torch.optim.Adam(model.parameters(), lr=0.5)
    restore_optimizer(fresh, tensors, json.loads((tmp_path / "meta.json").read_text()))
    assert fresh.param_groups[0]["lr"] == 0.01
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_a_checkpoint_is_replaced_whole_and_a_failed_save_keeps_the_last(tmp_path):
    ckpt = tmp_path / "checkpoints"
    save_checkpoint(ckpt, lambda tmp: (tmp / "w.bin").write_bytes(b"1"), {"step": 10})
    assert read_state(ckpt) == {"step": 10} and (ckpt / "w.bin").read_bytes() == b"1"

    def broken(tmp):
        (tmp / "w.bin").write_bytes(b"2")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(ckpt, broken, {"step": 20})
    assert read_state(ckpt) == {"step": 10} and (ckpt / "w.bin").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


def test_a_kill_between_the_renames_is_repaired_on_resume(tmp_path):
    ckpt = tmp_path / "checkpoints"
    save_checkpoint(ckpt, lambda tmp: None, {"step": 10})
    os.rename(ckpt, tmp_path / ".checkpoints.old-deadbeef")  # killed after renaming the old one out
    (tmp_path / ".checkpoints.tmp-cafef00d").mkdir()  # and before renaming the new one in
    assert read_state(ckpt) == {}
    said = open_checkpoints([ckpt])
    assert len(said) == 1 and "restored checkpoints" in said[0]
    assert read_state(ckpt) == {"step": 10}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


def test_trim_log_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    log = tmp_path / "loss.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)] + ['{"step": 5, "lo']
    log.write_text("\n".join(lines) + "\n")
    trim_log(log, lambda rec: rec["step"] <= 2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]
    trim_log(tmp_path / "absent.jsonl", lambda rec: True)
    assert not (tmp_path / "absent.jsonl").exists()


def test_sigterm_asks_the_run_to_stop_and_the_handlers_come_back(capsys):
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals("pathsegdiff test") as stop_asked:
        assert stop_asked() is False
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop_asked() is True
    assert signal.getsignal(signal.SIGTERM) is before
    assert "pathsegdiff test: signal 15: checkpointing and stopping" in capsys.readouterr().out


def test_check_resume_refuses_overwriting_or_resuming_another_run(tmp_path):
    from napari_pathsegdiff.engine.runs.run_folder import check_resume

    run_file = tmp_path / "run.json"
    check_resume(run_file, {"seed": 1}, resume=False, what="generator run")  # a new run: fine
    write_json(run_file, {"seed": 1, "data": ["a.png"]})
    with pytest.raises(ValueError, match=r"already holds a generator run: pass --resume"):
        check_resume(run_file, {"seed": 1}, resume=False, what="generator run")
    check_resume(run_file, {"seed": 1, "data": ["a.png"]}, resume=True, what="generator run")
    with pytest.raises(ValueError, match=r"cannot resume: data differs .*was \[\"a.png\"\], now \[\"b.png\"\]"):
        check_resume(run_file, {"seed": 1, "data": ["b.png"]}, resume=True, what="generator run")
