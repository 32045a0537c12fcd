"""What napari shows when this plugin's reader does not open a file: the reader's own reason
(empty file, 16-bit image, decompression bomb), not only "refused the file"."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
from test_bomb import write_bomb

from napari_pathsegdiff._reader import SlideNotOpened, get_reader
from napari_pathsegdiff.core.ome_writer import write_labels_ome_tiff
from napari_pathsegdiff.core.slide import SlideError

PLUGIN = "napari-pathsegdiff"


@pytest.fixture
def refused(tmp_path):
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    renamed = tmp_path / "picture.svs"
    renamed.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    fluo = tmp_path / "fluo.tif"
    tifffile.imwrite(fluo, np.zeros((32, 32), np.uint16))
    mask = tmp_path / "mask.ome.tif"
    write_labels_ome_tiff(mask, np.zeros((32, 32), np.uint8), mpp=0.5)
    return {
        empty: "is empty (0 bytes)",
        renamed: "is not a TIFF-based slide (it is a PNG image)",
        fluo: "is a 16-bit single-channel image",
        mask: "is a single-channel 8-bit image, not an RGB slide",
    }


def test_the_reader_steps_aside_with_its_reason_as_a_warning(refused):
    for path, reason in refused.items():
        with pytest.warns(SlideNotOpened) as record:
            assert get_reader(str(path)) is None
        assert len(record) == 1
        message = str(record[0].message)
        assert message.startswith(f"napari-pathsegdiff does not open {path.name}: ") and reason in message


def test_files_that_are_not_slides_by_name_get_no_warning(tmp_path):
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_reader(str(png)) is None and get_reader(str(tmp_path / "missing.svs")) is None


@pytest.mark.gui
def test_napari_shows_the_readers_reason(make_napari_viewer, refused, tmp_path):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    notification_manager.records.clear()
    with notification_manager:  # as napari.run() does: warnings and errors become notifications
        for path in refused:
            with pytest.raises(ValueError, match="refused the file"):
                viewer.open(str(path), plugin=PLUGIN)
    shown = [str(n.message) for n in notification_manager.records]
    for path, reason in refused.items():
        assert any(path.name in m and reason in m for m in shown), (path, shown)
    # a file the reader claims and refuses (a decompression bomb) raises the reason itself
    bomb = write_bomb(tmp_path / "bomb.tif")
    with pytest.raises(SlideError, match="claims 1,000,000 x 1,000,000 pixels .*decompression bomb"):
        viewer.open(str(bomb), plugin=PLUGIN)
    assert len(viewer.layers) == 0
