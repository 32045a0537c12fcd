"""Progress in logs: plain lines now and then instead of bars when the output is not a terminal."""

from __future__ import annotations

import io

import dask

from napari_pathsegdiff.core.progress import PeriodicLines, Progress, drive, is_terminal


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_lines_at_start_end_and_every_n_seconds():
    out, clock = io.StringIO(), Clock()
    lines = PeriodicLines(out, every=10, clock=clock)
    for second in range(26):  # one record a second, 25 steps
        clock.now = float(second)
        lines.update(Progress("train", second, 25, metrics={"loss": 1.0 / (second + 1)}))
    clock.now = 30.0
    lines.update(Progress("save", 0, 0, "saving the head"))
    for step in range(3):  # a stage cut short: its last record is written on close
        lines.update(Progress("extra", step, 10))
    lines.close()
    assert out.getvalue().splitlines() == [
        "train: 0/25 (0%) loss=1",
        "train: 10/25 (40%) loss=0.09091",
        "train: 20/25 (80%) loss=0.04762",
        "train: 25/25 (100%) loss=0.03846",
        "save: 0 saving the head",
        "extra: 0/10 (0%)",
        "extra: 2/10 (20%)",
    ]


def test_drive_writes_lines_not_bars_when_stderr_is_a_file(capsys):
    def work():
        for i in range(5):
            yield Progress("features", i + 1, 5, f"tile {i + 1}")
        return "result"

    seen = []
    assert not is_terminal()  # pytest captures stderr into a file
    assert drive(work(), callback=seen.append) == "result"
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == ["features: 1/5 (20%) tile 1", "features: 5/5 (100%) tile 5"]
    assert len(seen) == 5


def test_block_runner_logs_lines_when_stdout_is_not_a_terminal(capsys):
    from napari_pathsegdiff.engine.batch.dask_runner import BlockRunner

    tasks = [dask.delayed(lambda x: x * 2, pure=False)(i) for i in range(3)]
    with BlockRunner(threads=2, show_progress=True) as runner:
        assert runner.run(tasks) == [0, 2, 4]
    out = capsys.readouterr().out
    assert "\r" not in out
    assert out.splitlines()[0] == "blocks: 0/3 (0%)" and out.splitlines()[-1] == "blocks: 3/3 (100%)"
