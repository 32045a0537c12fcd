"""Whole-slide batch runs: threads == dask cluster == the engine on the whole region, resume
after a kill, tissue-only blocks, areas, outputs and bad slides in a batch.

A tiny RGB-feature head (tissue vs background, trained on a crop of the sample slide) keeps
every run to seconds; runs are limited to a box of the slide (``region``) with small blocks.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import shapely
from _synthetic_slides import tissue_like, write_pyramid
from shapely.geometry import shape

from napari_pathsegdiff.cli import main as cli_main
from napari_pathsegdiff.core.ome_writer import read_labels_ome_tiff, read_labels_ome_zarr
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.region import Region
from napari_pathsegdiff.core.slide import open_slide
from napari_pathsegdiff.core.tissue import tissue_mask
from napari_pathsegdiff.engine.batch import block_worker
from napari_pathsegdiff.engine.batch.dask_runner import BlockRunner
from napari_pathsegdiff.engine.inference.predict import predict_region
from napari_pathsegdiff.engine.batch.slide_batch import segment_slides
from napari_pathsegdiff.engine.training.train_head import TrainSample, train_head
from napari_pathsegdiff.models.features import RGBFeatures, build_extractor
from napari_pathsegdiff.models.heads import load_head, save_head

MPP = 0.499
BLOCK = 256
# Box of the analysis level (level 0 here) to segment: blocks rows 3-5, cols 1-4 (12 blocks),
# covering rows 768:1536 and columns 256:1280.
REGION = (800, 400, 512, 768)
UNION = Region(0, 768, 256, 768, 1024)
N_BLOCKS = 12


def _labels(out, name):
    array, _ = read_labels_ome_zarr(out / name / "labels.ome.zarr")
    return np.asarray(array)


def _summary(out, name):
    return json.loads((out / name / "summary.json").read_text())


def _direct(slide_path, head_dir, region, mpp=None):
    """The engine on the whole region at once: the reference for block runs."""
    head = load_head(head_dir)
    extractor = build_extractor(head.config.feature_config)
    with open_slide(slide_path) as slide:
        return drive(predict_region(slide, region, head=head, extractor=extractor, mpp=mpp), show=False).labels


# --- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample():
    from napari_pathsegdiff._sample_data import sample_slide_path

    return sample_slide_path()


@pytest.fixture(scope="module")
def head_dir(sample, tmp_path_factory):
    """Tissue (1) vs background (0), on RGB features, from the tissue mask of a crop."""
    region = Region(0, 1000, 600, 512, 512)
    with open_slide(sample) as slide:
        mask = tissue_mask(slide.read_region(region)).astype(np.uint8)
        assert 0.2 < mask.mean() < 0.8
        result = drive(
            train_head([TrainSample(slide, mask, region=region)], extractor=RGBFeatures(tile_size=128, halo=4),
                       class_names=["background", "tissue"], class_colors=["#000000", "#ff0000"],
                       steps=10, seed=0, hidden=4, depth=1, batch_size=8),
            show=False,
        )
    return save_head(result.head, tmp_path_factory.mktemp("head") / "tissue-head")


@pytest.fixture(scope="module")
def reference(sample, head_dir, tmp_path_factory):
    """A threads run over REGION with the OME-TIFF, and the engine on the union of its blocks."""
    out = tmp_path_factory.mktemp("threads")
    block_worker.reset_worker_state()
    result = segment_slides([sample], head=head_dir, out=out, block=BLOCK, region=REGION, ome_tiff=True)
    stats = block_worker.worker_stats()
    return {
        "out": out, "result": result, "stats": stats, "name": "CMU-1-Small-Region",
        "direct": _direct(sample, head_dir, UNION),
    }


@pytest.fixture(scope="module")
def cluster():
    """A real dask scheduler with two worker processes of one thread (``--workers 2``)."""
    with BlockRunner(workers=2) as runner:
        yield runner


# --- equality of threads, cluster and the engine -------------------------------------------------
def test_threads_run_equals_the_engine_on_the_whole_region(reference):
    summary = reference["result"].summaries[0]
    assert summary["status"] == "ok", summary["reason"]
    assert summary["level"] == 0 and summary["mpp"] == MPP
    assert summary["blocks"]["planned"] == summary["blocks"]["computed"] == N_BLOCKS
    labels = _labels(reference["out"], reference["name"])
    assert labels.shape == (2967, 2220) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[UNION.slices], reference["direct"])
    outside = labels.copy()
    outside[UNION.slices] = 0
    assert not outside.any()  # blocks outside the region are not segmented
    assert set(np.unique(reference["direct"])) == {0, 1}
    # the model was loaded once for the 12 blocks
    assert reference["stats"] == {"model_loads": 1, "blocks": N_BLOCKS}


@pytest.mark.slow
def test_local_cluster_run_equals_threads_run(sample, head_dir, reference, cluster, tmp_path):
    assert cluster.description == "local cluster with 2 workers"
    address = cluster.client.scheduler.address
    result = segment_slides([sample], head=head_dir, out=tmp_path, block=BLOCK, region=REGION, scheduler=address)
    summary = result.summaries[0]
    assert summary["status"] == "ok", summary["reason"]
    assert summary["scheduler"] == f"cluster at {address} with 2 workers"
    np.testing.assert_array_equal(_labels(tmp_path, reference["name"]), _labels(reference["out"], reference["name"]))
    records = [json.loads(p.read_text()) for p in (tmp_path / reference["name"] / "work" / "done").glob("r*-c*.json")]
    assert len(records) == N_BLOCKS
    workers = set(cluster.client.run(os.getpid).values())
    assert {r["pid"] for r in records} <= workers and os.getpid() not in workers
    assert {r["process_model_loads"] for r in records} == {1}  # once per worker, not per block


@pytest.mark.slow
def test_shared_slides_threads_cluster_and_engine_agree(shared_data, head_dir, cluster, tmp_path):
    slides = shared_data / "slides"
    pyramid = slides / "TCGA-CR-7395-pyramid.tif"
    region = (1000, 1000, 512, 700)
    union = Region(0, 768, 768, 768, 1024)
    address, client = cluster.client.scheduler.address, cluster.client
    client.run(block_worker.reset_worker_state)
    threads = segment_slides([pyramid], head=head_dir, out=tmp_path / "t", block=BLOCK, region=region)
    on_cluster = segment_slides([pyramid], head=head_dir, out=tmp_path / "c", block=BLOCK, region=region,
                                scheduler=address)
    for result in (threads, on_cluster):
        assert result.ok, result.failed
        assert result.summaries[0]["level"] == 0 and result.summaries[0]["blocks"]["computed"] == 12
    assert on_cluster.summaries[0]["scheduler"] == f"cluster at {address} with 2 workers"
    stats = list(client.run(block_worker.worker_stats).values())
    assert sum(s["blocks"] for s in stats) == 12
    for s in stats:  # once per worker process that computed blocks, never per block
        assert s["model_loads"] == (1 if s["blocks"] else 0)
    name = "TCGA-CR-7395-pyramid"
    labels = _labels(tmp_path / "t", name)
    np.testing.assert_array_equal(labels, _labels(tmp_path / "c", name))
    np.testing.assert_array_equal(labels[union.slices], _direct(pyramid, head_dir, union))

    # a forced coarser level (1.0 µm/px): tiles resampled to the head's 0.499 µm/px, and still
    # block for block the same as the engine on the whole region
    level1 = segment_slides([pyramid], head=head_dir, out=tmp_path / "l1", block=BLOCK, level=1,
                            region=(300, 300, 300, 300))
    summary = level1.summaries[0]
    assert summary["status"] == "ok" and summary["level"] == 1 and summary["mpp"] == pytest.approx(1.0, rel=1e-3)
    assert "resampled" in summary["notes"][0]
    np.testing.assert_array_equal(
        _labels(tmp_path / "l1", name)[256:768, 256:768], _direct(pyramid, head_dir, Region(1, 256, 256, 512, 512))
    )

    # the SVS has no µm/px: reported with what to do
    svs = slides / "TCGA-CR-7395-01A-01-TS1.svs"
    failed = segment_slides([svs], head=head_dir, out=tmp_path / "s", block=BLOCK, region=region)
    assert not failed.ok and "µm/px of the slide is unknown" in failed.failed[0]["reason"]
    assert "--mpp" in failed.failed[0]["reason"]


# --- tissue only ---------------------------------------------------------------------------------
def test_only_blocks_with_tissue_are_computed(head_dir, tmp_path):
    image = np.full((1024, 1024, 3), 242, np.uint8)  # glass
    tissue = tissue_like(1024, 1024, seed=1)
    for ys, xs in ((slice(300, 460), slice(560, 720)), (slice(800, 900), slice(50, 200))):
        image[ys, xs] = tissue[ys, xs]  # inside block (1, 2) and block (3, 0)
    path = write_pyramid(tmp_path / "islands.tif", image, levels=1, mpp=MPP)
    block_worker.reset_worker_state()
    result = segment_slides([path], head=head_dir, out=tmp_path / "out", block=BLOCK, tissue_only=True)
    summary = result.summaries[0]
    assert summary["status"] == "ok", summary["reason"]
    assert summary["blocks"] == {"total": 16, "outside_region": 0, "tissue": 2, "skipped_no_tissue": 14,
                                 "planned": 2, "resumed": 0, "computed": 2}
    done = sorted(p.stem for p in (tmp_path / "out" / "islands" / "work" / "done").glob("r*-c*.json"))
    assert done == ["r1-c2", "r3-c0"]
    assert block_worker.worker_stats()["blocks"] == 2
    labels = _labels(tmp_path / "out", "islands")
    labels[256:512, 512:768] = 0
    labels[768:1024, 0:256] = 0
    assert not labels.any()  # nothing outside the two tissue blocks


# --- resume --------------------------------------------------------------------------------------
def test_failure_mid_way_then_resume_computes_only_the_rest(sample, head_dir, reference, monkeypatch, tmp_path):
    real = block_worker.predict_block
    calls = []

    def failing(job, region):
        calls.append(region)
        if len(calls) == 5:
            raise RuntimeError("injected failure")
        return real(job, region)

    monkeypatch.setattr(block_worker, "predict_block", failing)
    first = segment_slides([sample], head=head_dir, out=tmp_path, block=BLOCK, region=REGION)
    assert not first.ok and "injected failure" in first.failed[0]["reason"]
    assert json.loads(first.path.read_text())["failed"] == 1
    done_dir = tmp_path / reference["name"] / "work" / "done"
    done_before = len(list(done_dir.glob("r*-c*.json")))
    assert 4 <= done_before < N_BLOCKS
    # a marker whose write a kill cut short: a temporary file beside it, never renamed
    unrenamed = done_dir / ".r9-c9.json.tmp-0badf00d.json"
    unrenamed.write_text('{"counts": ')

    monkeypatch.setattr(block_worker, "predict_block", real)
    again = segment_slides([sample], head=head_dir, out=tmp_path, block=BLOCK, region=REGION, resume=True)
    assert not unrenamed.exists()
    blocks = again.summaries[0]["blocks"]
    assert again.ok and blocks["resumed"] == done_before and blocks["computed"] == N_BLOCKS - done_before
    np.testing.assert_array_equal(_labels(tmp_path, reference["name"]), _labels(reference["out"], reference["name"]))

    # other settings cannot resume these blocks
    other = segment_slides([sample], head=head_dir, out=tmp_path, block=128, region=REGION, resume=True)
    assert "cannot resume" in other.failed[0]["reason"] and "block" in other.failed[0]["reason"]


@pytest.mark.slow
def test_cli_killed_mid_way_resumes_to_the_identical_result(sample, head_dir, reference, tmp_path):
    args = ["segment-slide", str(sample), "--head", str(head_dir), "--out", str(tmp_path), "--block", "128",
            "--region", *map(str, (UNION.y, UNION.x, UNION.height, UNION.width)), "--quiet"]
    done_dir = tmp_path / reference["name"] / "work" / "done"
    proc = subprocess.Popen([sys.executable, "-m", "napari_pathsegdiff.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600  # a loaded machine may take minutes to start the run
        while len(list(done_dir.glob("r*-c*.json"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    done_before = len(list(done_dir.glob("r*-c*.json")))
    total = 6 * 8
    assert 3 <= done_before < total

    assert cli_main(args + ["--resume"]) == 0
    blocks = _summary(tmp_path, reference["name"])["blocks"]
    assert blocks["resumed"] == done_before and blocks["computed"] == total - done_before
    np.testing.assert_array_equal(_labels(tmp_path, reference["name"])[UNION.slices], reference["direct"])


# --- summary and outputs -------------------------------------------------------------------------
def test_summary_areas_are_label_counts_times_pixel_area(sample, reference):
    out, name = reference["out"], reference["name"]
    summary = _summary(out, name)
    labels = _labels(out, name)
    pixel_mm2 = MPP**2 / 1e6
    classes = {c["id"]: c for c in summary["classes"]}
    assert [(c["name"], c["color"]) for c in classes.values()] == [("background", "#000000"), ("tissue", "#ff0000")]
    assert classes[1]["pixels"] == int((labels == 1).sum()) > 0
    assert classes[0]["pixels"] + summary["not_segmented_pixels"] == int((labels == 0).sum())
    assert summary["not_segmented_pixels"] == labels.size - UNION.height * UNION.width
    for c in classes.values():
        assert c["area_mm2"] == pytest.approx(c["pixels"] * pixel_mm2, rel=1e-12)
    # tissue: found on level 0 subsampled by 2 (2967 px > 2048), each mask pixel 2 x 2 pixels
    assert summary["tissue"]["level"] == 0 and summary["tissue"]["step"] == 2
    with open_slide(sample) as slide:
        mask = tissue_mask(np.asarray(slide.levels[0])[::2, ::2])
    assert summary["tissue"]["area_mm2"] == pytest.approx(mask.sum() * (2 * MPP) ** 2 / 1e6, rel=1e-9)
    assert summary["seconds"]["total"] > 0 and set(summary["seconds"]) >= {"blocks", "outputs", "total"}
    batch = json.loads((out / "batch_summary.json").read_text())
    assert batch["ok"] == 1 and batch["failed"] == 0 and batch["slides"][0]["status"] == "ok"


def test_outputs_carry_scale_classes_and_level0_coordinates(reference):
    folder = reference["out"] / reference["name"]
    labels = _labels(reference["out"], reference["name"])
    import zarr

    root = zarr.open_group(str(folder / "labels.ome.zarr"), mode="r")
    multiscale = root.attrs["multiscales"][0]
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [MPP, MPP]
    assert multiscale["axes"][0]["unit"] == "micrometer"
    assert root.attrs["image-label"]["properties"] == [
        {"label-value": 0, "class": "background"}, {"label-value": 1, "class": "tissue"}]
    assert root.attrs["image-label"]["colors"][1] == {"label-value": 1, "rgba": [255, 0, 0, 255]}
    level1, _ = read_labels_ome_zarr(folder / "labels.ome.zarr", level=1)
    np.testing.assert_array_equal(np.asarray(level1), labels[::2, ::2])
    tiff, tiff_mpp = read_labels_ome_tiff(folder / "labels.ome.tif")
    np.testing.assert_array_equal(tiff, labels)
    assert tiff_mpp == pytest.approx(MPP)

    collection = json.loads((folder / "classes.geojson").read_text())
    assert {f["properties"]["classification"]["name"] for f in collection["features"]} == {"tissue"}
    polygons = shapely.union_all([shape(f["geometry"]) for f in collection["features"]])
    x0, y0, x1, y1 = polygons.bounds
    assert UNION.x <= x0 and x1 <= UNION.x1 and UNION.y <= y0 and y1 <= UNION.y1
    assert polygons.area == pytest.approx((labels == 1).sum(), rel=0.05)


# --- bad slides and options ----------------------------------------------------------------------
def test_bad_slides_are_reported_and_the_others_finish(sample, head_dir, tmp_path, capsys):
    broken = tmp_path / "broken.svs"
    broken.write_text("not a slide")
    blank = write_pyramid(tmp_path / "blank.tif", np.full((512, 512, 3), 245, np.uint8), levels=1, mpp=MPP)
    no_mpp = write_pyramid(tmp_path / "no-mpp.tif", tissue_like(512, 512), levels=1, mpp=None)
    out = tmp_path / "out"
    argv = ["segment-slide", str(broken), str(sample), str(blank), str(no_mpp), "--head", str(head_dir),
            "--out", str(out), "--block", "256", "--region", "800", "400", "256", "256", "--quiet"]
    assert cli_main(argv) == 1
    printed = capsys.readouterr().out
    assert "1 of 4 slides segmented" in printed and printed.count("FAILED") == 3
    batch = json.loads((out / "batch_summary.json").read_text())
    status = {s["name"]: (s["status"], s["reason"]) for s in batch["slides"]}
    assert status["CMU-1-Small-Region"] == ("ok", None)
    assert status["broken"][0] == "failed" and "unreadable" in status["broken"][1] and "not a TIFF" in status["broken"][1]
    assert status["blank"][0] == "failed" and "no tissue" in status["blank"][1]
    assert status["no-mpp"][0] == "failed" and "--mpp" in status["no-mpp"][1]
    assert batch["ok"] == 1 and batch["failed"] == 3
    assert _summary(out, "blank")["status"] == "failed"
    assert (out / "CMU-1-Small-Region" / "labels.ome.zarr").is_dir()

    # --mpp supplies the missing µm/px; --level forces a level, and a missing one is reported
    assert cli_main(["segment-slide", str(no_mpp), "--head", str(head_dir), "--out", str(out),
                     "--block", "256", "--mpp", "0.5", "--quiet"]) == 0
    assert _summary(out, "no-mpp")["mpp"] == 0.5 and _summary(out, "no-mpp")["mpp_source"] == "given (--mpp)"
    assert cli_main(["segment-slide", str(sample), "--head", str(head_dir), "--out", str(out),
                     "--level", "2", "--quiet"]) == 1
    assert "level 2 does not exist" in _summary(out, "CMU-1-Small-Region")["reason"]


def test_user_errors_stop_the_batch_with_one_clear_line(sample, head_dir, tmp_path, capsys):
    copy = tmp_path / "copy" / sample.name
    copy.parent.mkdir()
    copy.write_bytes(sample.read_bytes())
    assert cli_main(["segment-slide", str(sample), str(copy), "--head", str(head_dir), "--out", str(tmp_path)]) == 2
    assert "share the output folder" in capsys.readouterr().err
    base = ["segment-slide", str(sample), "--out", str(tmp_path), "--quiet"]
    assert cli_main(base + ["--head", str(tmp_path / "missing")]) == 2
    assert "Head folder" in capsys.readouterr().err
    assert cli_main(base + ["--head", str(head_dir), "--level", "coarse"]) == 2
    assert "--level must be 'auto' or a level number" in capsys.readouterr().err
    assert cli_main(base + ["--head", str(head_dir), "--block", "8"]) == 2
    assert "--block must be at least" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(base + ["--head", str(head_dir), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "CMU-1-Small-Region").exists()


def test_block_plan_is_chunk_aligned_and_cut_at_the_edges():
    from napari_pathsegdiff.engine.batch.block_plan import plan_blocks

    blocks = plan_blocks((600, 1000), level=2, block=256)
    assert [b.key for b in blocks][:4] == ["r0-c0", "r0-c1", "r0-c2", "r0-c3"] and len(blocks) == 3 * 4
    assert blocks[-1].region == Region(2, 512, 768, 88, 232)
    assert sum(b.pixels for b in blocks) == 600 * 1000
    within = plan_blocks((600, 1000), level=2, block=256, within=Region(2, 300, 200, 10, 400))
    assert [b.key for b in within] == ["r1-c0", "r1-c1", "r1-c2"]
    assert math.ceil(600 / 256) * math.ceil(1000 / 256) == len(blocks)


# --- one writer per --out, atomic outputs, the same result whatever the layout -------------------
def test_a_run_holds_the_lock_of_its_out_folder(sample, head_dir, tmp_path):
    from napari_pathsegdiff.core.locks import FolderInUse, FolderLock
    from napari_pathsegdiff.engine.batch.slide_batch import OUT_LOCK

    refused = []

    def try_to_write_alongside(record):
        if record.message.endswith("opening"):
            with pytest.raises(FolderInUse) as caught:
                FolderLock(tmp_path, OUT_LOCK, purpose="another run").acquire()
            refused.append(str(caught.value))

    result = segment_slides([sample], head=head_dir, out=tmp_path, block=BLOCK, region=(800, 400, 256, 256),
                            callback=try_to_write_alongside)
    assert result.ok and len(refused) == 1
    assert f"is in use by process {os.getpid()}" in refused[0] and "(pathsegdiff segment-slide)" in refused[0]
    FolderLock(tmp_path, OUT_LOCK, purpose="after the run").acquire().release()  # released at the end


@pytest.mark.slow
def test_a_second_run_into_the_same_out_is_refused_and_a_killed_ones_lock_is_taken_over(
        sample, head_dir, reference, tmp_path, capsys):
    args = ["segment-slide", str(sample), "--head", str(head_dir), "--out", str(tmp_path), "--block", "128",
            "--region", *map(str, (UNION.y, UNION.x, UNION.height, UNION.width)), "--quiet"]
    lock_file = tmp_path / ".segment-slide.lock"
    first = subprocess.Popen([sys.executable, "-m", "napari_pathsegdiff.cli", *args],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while first.poll() is None and time.monotonic() < deadline:
            if lock_file.is_file() and f'"pid": {first.pid}' in lock_file.read_text():
                break
            time.sleep(0.02)
        assert first.poll() is None, first.stderr.read().decode()
        assert cli_main(args) == 2  # the second writer stops before touching anything
        err = capsys.readouterr().err
        assert f"is in use by process {first.pid} on host " in err and ", since 20" in err
        assert "Wait until it ends, or use another folder." in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert cli_main(args[:-1]) == 0
    out = capsys.readouterr().out
    assert f"the run of process {first.pid} on host" in out and "ended without finishing" in out
    np.testing.assert_array_equal(_labels(tmp_path, reference["name"])[UNION.slices], reference["direct"])


_KILL_WHILE_WRITING = """
import os, signal, sys
from pathlib import Path
from napari_pathsegdiff.engine.batch import slide_outputs

folder, which = Path(sys.argv[1]), sys.argv[2]
real_tiff, real_zarr = slide_outputs.write_labels_ome_tiff, slide_outputs.write_labels_ome_zarr

def killed_after_half(write):
    def wrapper(path, *args, **kwargs):
        write(path, *args, **kwargs)
        path = Path(path)
        victim = path if path.is_file() else max(p for p in path.rglob("*") if p.is_file())
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # half written
        os.kill(os.getpid(), signal.SIGKILL)
    return wrapper

if which == "tiff":
    slide_outputs.write_labels_ome_tiff = killed_after_half(real_tiff)
else:
    slide_outputs.write_labels_ome_zarr = killed_after_half(real_zarr)
slide_outputs.write_slide_outputs(folder, folder / "work" / "labels.zarr", name="x", mpp=0.5,
                                  level_downsample=(1.0, 1.0), classes=[(1, "tissue", "#ff0000")],
                                  ome_tiff=True)
"""


@pytest.mark.parametrize("which", ["zarr", "tiff"])
def test_a_kill_while_writing_outputs_leaves_no_partial_file(reference, tmp_path, which):
    import shutil

    from napari_pathsegdiff.core.atomic import leftovers
    from napari_pathsegdiff.engine.batch.slide_outputs import OME_TIFF, OME_ZARR, write_slide_outputs

    folder = tmp_path / "slide"
    shutil.copytree(reference["out"] / reference["name"], folder)
    before_tiff = (folder / OME_TIFF).read_bytes()
    child = subprocess.run([sys.executable, "-c", _KILL_WHILE_WRITING, str(folder), which],
                           capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    # the final names hold the previous complete outputs; the partial one is a hidden leftover
    assert (folder / OME_TIFF).read_bytes() == before_tiff
    np.testing.assert_array_equal(_labels(tmp_path, "slide"), _labels(reference["out"], reference["name"]))
    partial = OME_ZARR if which == "zarr" else OME_TIFF
    assert [kind for kind, _ in leftovers(folder / partial)] == ["tmp"]
    # writing again removes the leftover and gives complete files
    write_slide_outputs(folder, folder / "work" / "labels.zarr", name="x", mpp=MPP,
                        level_downsample=(1.0, 1.0), classes=[(0, "background", "#000000"), (1, "tissue", "#ff0000")],
                        ome_tiff=True)
    assert leftovers(folder / OME_ZARR) == [] and leftovers(folder / OME_TIFF) == []
    tiff_labels, _ = read_labels_ome_tiff(folder / OME_TIFF)
    np.testing.assert_array_equal(np.asarray(tiff_labels), _labels(reference["out"], reference["name"]))


def test_every_block_runs_with_one_torch_thread_whatever_the_threads(sample, head_dir, reference, tmp_path):
    import torch

    before = torch.get_num_threads()
    result = segment_slides([sample], head=head_dir, out=tmp_path, block=BLOCK, region=REGION, threads=3)
    assert result.ok and torch.get_num_threads() == before  # the caller's count is given back
    np.testing.assert_array_equal(_labels(tmp_path, reference["name"]), _labels(reference["out"], reference["name"]))
    for out in (tmp_path, reference["out"]):
        records = [json.loads(p.read_text()) for p in (out / reference["name"] / "work" / "done").glob("r*-c*.json")]
        assert len(records) == N_BLOCKS and {r["torch_threads"] for r in records} == {1}


def test_a_decompression_bomb_in_a_batch_is_refused_with_the_limit_to_raise(sample, head_dir, tmp_path, capsys):
    from test_bomb import write_bomb

    bomb = write_bomb(tmp_path / "bomb.tif")
    out = tmp_path / "out"
    t0 = time.perf_counter()
    assert cli_main(["segment-slide", str(bomb), "--head", str(head_dir), "--out", str(out), "--quiet"]) == 1
    print(f"bomb refused by segment-slide in {time.perf_counter() - t0:.2f} s")
    reason = _summary(out, "bomb")["reason"]
    assert reason.startswith(f"unreadable: {bomb} claims 1,000,000 x 1,000,000 pixels")
    assert "--max-pixels N" in reason
    assert cli_main(["segment-slide", str(sample), "--head", str(head_dir), "--out", str(out),
                     "--max-pixels", "1e6", "--quiet"]) == 1
    assert "claims 2,967 x 2,220 pixels" in _summary(out, "CMU-1-Small-Region")["reason"]
    for bad, message in ((["--max-pixels", "0"], "--max-pixels must be a positive"),
                         (["--threads", "0"], "--threads must be 1 or more")):
        capsys.readouterr()
        assert cli_main(["segment-slide", str(sample), "--head", str(head_dir), "--out", str(out),
                         "--quiet", *bad]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_diffusion_features_threads_and_a_two_worker_cluster_agree_to_the_pixel(sample, cluster, tmp_path):
    from napari_pathsegdiff.engine.shipped_models import default_backbone_installed, demo_head_folder

    if not default_backbone_installed() or demo_head_folder() is None:
        pytest.skip("the default backbone and demo head are not installed in this checkout")
    box = dict(block=512, region=(512, 0, 512, 1024))
    on_threads = segment_slides([sample], head=demo_head_folder(), out=tmp_path / "threads", threads=2, **box)
    on_cluster = segment_slides([sample], head=demo_head_folder(), out=tmp_path / "cluster",
                                scheduler=cluster.client.scheduler.address, **box)
    assert on_threads.ok and on_cluster.ok
    threads_labels = _labels(tmp_path / "threads", "CMU-1-Small-Region")
    np.testing.assert_array_equal(threads_labels, _labels(tmp_path / "cluster", "CMU-1-Small-Region"))
    assert len(np.unique(threads_labels[512:1024, :1024])) >= 2  # a real segmentation, not a blank
    for run in ("threads", "cluster"):
        records = [json.loads(p.read_text())
                   for p in (tmp_path / run / "CMU-1-Small-Region" / "work" / "done").glob("r*-c*.json")]
        assert len(records) == 2 and {r["torch_threads"] for r in records} == {1}
