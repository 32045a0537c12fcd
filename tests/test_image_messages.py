"""Images read by the command line: an empty, misnamed or damaged file is named as such."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_pathsegdiff.core.images import ImageError, read_mask, read_rgb


def test_empty_misnamed_and_damaged_files_say_what_they_are(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png is empty \(0 bytes\): it holds no image"):
        read_rgb(tmp_path / "empty.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "real.png")
    (tmp_path / "png.tif").write_bytes((tmp_path / "real.png").read_bytes())
    with pytest.raises(ImageError, match=r"png\.tif is a PNG image named \.tif: rename it .*\(\.png\)"):
        read_rgb(tmp_path / "png.tif")
    tifffile.imwrite(tmp_path / "tif.png", np.full((8, 8), 3, np.uint8))
    assert read_mask(tmp_path / "tif.png").tolist() == np.full((8, 8), 3).tolist()  # PIL reads by content
    (tmp_path / "notes.jpg").write_text("a text file")
    with pytest.raises(ImageError, match=r"notes\.jpg is not a JPEG image \(its first bytes"):
        read_rgb(tmp_path / "notes.jpg")
    (tmp_path / "cut.png").write_bytes((tmp_path / "real.png").read_bytes()[:30])
    with pytest.raises(ImageError, match=r"Cannot read .*cut\.png: the PNG file is damaged or truncated"):
        read_rgb(tmp_path / "cut.png")
