"""Synthetic pairs of an annotation session (engine, no GUI): corrected layouts, the class check,
style tiles, generation into the session folder, and generated pairs in "Train on my edits"."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _synthesis_scene import CLASSES, TILE, corrected_session, rgb_features, tiny_generator, write_scene

from napari_pathsegdiff.core.images import read_mask
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.region import Region
from napari_pathsegdiff.core.slide import open_slide
from napari_pathsegdiff.engine.session.annotation import AnnotationError, AnnotationSession
from napari_pathsegdiff.engine.session.session_folder import HEAD
from napari_pathsegdiff.engine.session.session_synthesis import (
    SYNTHETIC,
    analysis_side,
    corrected_layouts,
    export_training_pairs,
    generate_session_pairs,
    mosaic,
    style_tiles,
    synthetic_samples,
)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    scene = write_scene(root / "scene.tif")
    folder = corrected_session(scene)
    return scene, folder, tiny_generator(root)


@pytest.fixture
def session(made):
    scene, folder, _ = made
    with open_slide(scene) as slide:
        yield AnnotationSession.open(slide, folder=folder, extractor=rgb_features())


def test_corrected_layouts_are_fully_labelled_squares_of_painted_chunks(session, tmp_path):
    assert analysis_side(session, TILE, 0.5) == TILE and analysis_side(session, TILE, 0.25) == TILE // 2
    layouts = corrected_layouts(session, TILE)
    merged = session.store.read(0, 0, *session.level_shape)
    assert len(layouts) > 50
    for region, mask in layouts:
        assert mask.shape == (TILE, TILE) and mask.all()
        assert np.array_equal(mask, merged[region.slices])
    # the correction (class 3 painted over stroma) is in the layouts
    assert any((m == 3).any() and r.x <= 100 < r.x1 and r.y <= 200 < r.y1 for r, m in layouts)
    n = export_training_pairs(session, tmp_path / "pairs", TILE)
    masks = sorted((tmp_path / "pairs" / "masks").iterdir())
    assert n == len(masks) == len(corrected_layouts(session, TILE, stride=TILE))
    assert {v for p in masks for v in np.unique(read_mask(p))} == {1, 2, 3}


def test_a_session_with_nothing_corrected_has_no_layouts(tmp_path):
    with open_slide(write_scene(tmp_path / "s.tif")) as slide:
        fresh = AnnotationSession.open(slide, extractor=rgb_features(), classes=CLASSES)
        with pytest.raises(AnnotationError, match="No corrected region holds a fully labelled 32x32-px square"):
            corrected_layouts(fresh, TILE)
        fresh.store.write_edits(10, 10, np.full((4, 4), 2, np.uint8))  # strokes only: not a layout
        with pytest.raises(AnnotationError, match="segment a region with the head, correct it"):
            corrected_layouts(fresh, TILE)


def test_mosaic_places_tiles_in_a_near_square_grid():
    tiles = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
    grid = mosaic(tiles, fill=9, gap=1)
    assert grid.shape == (2 * 5 - 1, 3 * 5 - 1)
    assert np.array_equal(grid[5:9, 5:9], tiles[4]) and (grid[5:9, 10:14] == 9).all() and (grid[4] == 9).all()


def test_style_tiles_come_from_tissue_of_the_region(session):
    region = Region(0, 300, 0, 200, 380)  # level 0: the pink stroma only
    pool = drive(style_tiles([(session.slide, region)], size=16, mpp=0.5, n_tiles=6, seed=1), show=False)
    assert pool.tiles.shape == (6, 16, 16, 3)
    assert (pool.positions[:, 0] >= 150).all() and (pool.positions[:, 1] + 16 <= 190).all()  # 0.5 µm/px pixels
    assert np.abs(pool.tiles.reshape(-1, 3).mean(0) - (235, 165, 200)).max() < 10
    with pytest.raises(AnnotationError, match="No tissue tile was found"):
        drive(style_tiles([(session.slide, Region(0, 0, 0, 100, 700))], size=16, mpp=0.5, n_tiles=2), show=False)


def test_generation_writes_n_pairs_and_early_closing_keeps_the_previous_set(session, made, tmp_path):
    _, folder, generator = made
    view = Region(0, 200, 0, 300, 768)
    out = drive(generate_session_pairs(session, generator, n=3, style=[(session.slide, view)], steps=2,
                                       device="cpu"), show=False)
    assert out.folder == folder / SYNTHETIC
    assert out.images.shape == (3, TILE, TILE, 3) and out.masks.shape == (3, TILE, TILE)
    assert sorted(p.name for p in (out.folder / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert set(np.unique(out.masks)) <= {1, 2, 3}
    layouts = {m.tobytes() for _, m in corrected_layouts(session, TILE)}
    assert all(m.tobytes() in layouts for m in out.masks)
    record = json.loads((out.folder / "generation.json").read_text())
    assert record["class_ids"] == [1, 2, 3] and len(record["tiles"]) == 3
    before = (out.folder / "images" / "00000.png").read_bytes()
    edits = session.store.read(0, 0, *session.level_shape, which="edits")
    work = generate_session_pairs(session, generator, n=6, style=[(session.slide, view)], steps=2, device="cpu",
                                  seed=5)
    while next(work).stage != "generate":
        pass
    work.close()  # cancelled in the middle of the generation
    assert sorted(p.name for p in (out.folder / "images").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert (out.folder / "images" / "00000.png").read_bytes() == before
    assert np.array_equal(session.store.read(0, 0, *session.level_shape, which="edits"), edits)


def test_a_generator_for_other_classes_is_refused(session, tmp_path):
    other = tiny_generator(tmp_path, class_ids=[0, 1, 2], class_names=["bg", "gland", "stroma"])
    with pytest.raises(AnnotationError, match=r"trained for other classes \(0 \(bg\), 1 \(gland\), 2 \(stroma\)\) "
                                              r"than this slide's \(1 \(background\)"):
        drive(generate_session_pairs(session, other, n=1, steps=1, device="cpu"), show=False)
    renamed = tiny_generator(tmp_path, class_names=["background", "stroma", "tumour"], name="renamed")
    with pytest.raises(AnnotationError, match="trained for other classes"):
        drive(generate_session_pairs(session, renamed, n=1, steps=1, device="cpu"), show=False)


def test_generated_pairs_join_the_training_with_their_weight(session, made):
    _, folder, generator = made
    drive(generate_session_pairs(session, generator, n=2, steps=1, device="cpu"), show=False)
    samples = synthetic_samples(session)
    assert len(samples) == 2 and all(s.weight == 0.5 and s.mask.shape == (TILE, TILE) for s in samples)
    plain = drive(session.train_on_edits(steps=3), show=False)
    mixed = drive(session.train_on_edits(steps=3, synthetic=samples), show=False)
    assert plain.synthetic == 0 and mixed.synthetic == 2
    assert plain.result.windows["weighted"] == 0 and mixed.result.windows["weighted"] > 0
    assert sum(mixed.result.class_pixels.values()) == sum(plain.result.class_pixels.values()) + 2 * TILE * TILE
    assert json.loads((folder / HEAD / "training.json").read_text())["synthetic"] == 2
