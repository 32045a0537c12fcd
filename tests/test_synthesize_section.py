"""The Synthesize section in a real napari viewer (Xvfb): open or train a generator, generate tiles
into the session folder, show them as a grid, include them in the next training, cancel, and
refuse a generator made for other classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _synthesis_scene import TILE, corrected_session, tiny_backbone_folder, tiny_generator, write_scene

from napari_pathsegdiff.core.images import read_mask, read_rgb
from napari_pathsegdiff.engine.session.session_folder import HEAD
from napari_pathsegdiff.engine.session.session_synthesis import CPU_SECONDS_PER_STEP, GENERATORS, SYNTHETIC, WIDGET_SETTINGS

pytestmark = pytest.mark.gui

PLUGIN = "napari-pathsegdiff"
WAIT_MS = 120_000  # jobs take seconds; the limit only guards against a hang


@pytest.fixture
def scene(tmp_path):
    scene = write_scene(tmp_path / "slides" / "scene.tif")
    corrected_session(scene)
    return scene


def _dock(viewer, qtbot, tmp_path, scene):
    """The widget over the scene, its corrected session open, showing the lower (tissue) half."""
    from napari_pathsegdiff._widgets import SegmentationWidget

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "PathSegDiff")
    assert isinstance(widget, SegmentationWidget)
    widget.controller.store_root = tmp_path / "user-cache"
    [layer] = viewer.open(str(scene), plugin=PLUGIN)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    a, b = layer.data_to_world([300, 0]), layer.data_to_world([512, 768])
    viewer.scene.camera.center = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
    h, w = viewer.canvas.size
    viewer.scene.camera.zoom = max(h / (b[0] - a[0]), w / (b[1] - a[1]))  # only tissue in view
    section = widget.synthesize_section
    section.device = "cpu"
    section.sampling_steps = 2
    return widget, section


def _open_generator(qtbot, section, folder):
    with qtbot.waitSignal(section.generator_ready, timeout=WAIT_MS) as blocker:
        section.open_generator(folder)
    return blocker.args[0]


def _generate(qtbot, section, n):
    section.count.setValue(n)
    with qtbot.waitSignal(section.generated, timeout=WAIT_MS) as blocker:
        section.generate_button.click()
    return blocker.args[0]


def test_the_section_states_the_training_time_on_a_two_core_cpu(make_napari_viewer):
    from napari_pathsegdiff._widgets import SegmentationWidget

    widget = SegmentationWidget(make_napari_viewer())
    text = widget.synthesize_section.time_label.text()
    minutes = round(WIDGET_SETTINGS["steps"] * CPU_SECONDS_PER_STEP / 60)
    assert f"about {minutes} min on a 2-core CPU ({WIDGET_SETTINGS['steps']} steps" in text


def test_generate_shows_a_grid_and_the_pairs_join_the_next_training(make_napari_viewer, qtbot, tmp_path, scene):
    viewer = make_napari_viewer()
    widget, section = _dock(viewer, qtbot, tmp_path, scene)
    controller = widget.controller
    session = controller.session
    assert _open_generator(qtbot, section, tiny_generator(tmp_path)) == tmp_path / "generator"
    assert "1 (background), 2 (stroma), 3 (nuclei-rich)" in section.generator_label.text()

    generated = _generate(qtbot, section, 5)
    assert generated is not None and generated.folder == session.folder / SYNTHETIC
    names = [f"{i:05d}.png" for i in range(5)]
    assert sorted(p.name for p in (generated.folder / "images").iterdir()) == names
    assert sorted(p.name for p in (generated.folder / "masks").iterdir()) == names
    for name in names:
        assert read_rgb(generated.folder / "images" / name).shape == (TILE, TILE, 3)
        assert set(np.unique(read_mask(generated.folder / "masks" / name))) <= {1, 2, 3}
    record = json.loads((generated.folder / "generation.json").read_text())
    assert all(s["source"] == "scene.tif" for t in record["tiles"] for s in t["style"])
    # one grid of 2 rows x 3 columns of 32-px tiles, 2 px apart, and its masks in the class colours
    tiles, masks = viewer.layers["synthetic tiles"], viewer.layers["synthetic masks"]
    assert tiles.data.shape == (2 * 34 - 2, 3 * 34 - 2, 3) and tiles.rgb
    assert masks.data.shape == (66, 100)
    assert np.array_equal(masks.data[:TILE, :TILE], generated.masks[0])
    assert set(np.unique(masks.data)) <= {0, 1, 2, 3}
    assert np.allclose(masks.colormap.map(np.array([3]))[0][:3], np.array([0x91, 0x1E, 0xB4]) / 255, atol=0.01)
    assert tiles.translate[1] > viewer.layers["scene"].extent.world[1][1]  # beside the slide, not over it
    assert controller.session is session  # the new layers do not switch the session

    # "Include in next training": the generated pairs are weighted samples of the training
    controller.train_steps = 3
    for include, expected in ((False, 0), (True, 5)):
        section.include.setChecked(include)
        with qtbot.waitSignal(controller.train_finished, timeout=WAIT_MS) as blocker:
            widget.train_section.train_button.click()
        outcome = blocker.args[0]
        assert outcome.synthetic == expected
        assert json.loads((session.folder / HEAD / "training.json").read_text())["synthetic"] == expected
        assert (outcome.result.windows["weighted"] > 0) == bool(expected)
    assert "and 5 generated tiles" in widget.train_section.status.text()

    # style from every slide open (a second slide as well): a new set replaces the first
    viewer.open(str(write_scene(tmp_path / "more" / "other.tif", seed=1)), plugin=PLUGIN)
    viewer.layers.selection.active = viewer.layers["scene"]
    qtbot.waitUntil(lambda: controller.session is not None and controller.image_layer == viewer.layers["scene"],
                    timeout=WAIT_MS)
    section.style.setCurrentText("whole slides open")
    again = _generate(qtbot, section, 4)
    assert len(list((again.folder / "images").iterdir())) == 4
    sources = json.loads((again.folder / "generation.json").read_text())["style_sources"]
    assert sources == ["scene.tif", "other.tif"]


def test_train_a_generator_on_my_labels_then_cancel_keeps_the_edits(make_napari_viewer, qtbot, tmp_path, scene):
    viewer = make_napari_viewer()
    widget, section = _dock(viewer, qtbot, tmp_path, scene)
    session = widget.controller.session
    edits = session.store.read(0, 0, *session.level_shape, which="edits")
    section.backbone = str(tiny_backbone_folder(tmp_path))
    section.training_config = "tiny"
    section.training_settings = {"steps": 2, "tile_size": TILE, "pair_tiles": 8, "style_tiles": 8}
    with qtbot.waitSignal(section.generator_ready, timeout=WAIT_MS) as blocker:
        section.train_button.click()
        assert section.cancel_button.isEnabled() and not section.generate_button.isEnabled()
    folder = blocker.args[0]
    assert folder is not None and folder.parent.parent == session.folder / GENERATORS
    assert section.generator_folder == folder and "Generator trained" in section.status.text()
    config = json.loads((folder / "config.json").read_text())
    assert config["class_ids"] == [1, 2, 3] and config["class_names"] == ["background", "stroma", "nuclei-rich"]
    assert config["tile_size"] == TILE
    assert _generate(qtbot, section, 2).images.shape == (2, TILE, TILE, 3)

    # a long run, cancelled after its first steps: nothing the user painted changes
    section.training_settings = {"steps": 5000, "tile_size": TILE, "pair_tiles": 8, "style_tiles": 8}
    bar = section.progress
    with qtbot.waitSignal(section.generator_ready, timeout=WAIT_MS) as blocker:
        section.train_button.click()
        qtbot.waitUntil(lambda: bar.format().startswith("train") and bar.value() >= 2, timeout=WAIT_MS)
        section.cancel_button.click()
    assert blocker.args == [None]
    job = section.last_job
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT_MS)
    assert job.cancelled and job.yields_after_cancel <= 1
    assert "cancelled; your edits are unchanged" in section.status.text()
    assert np.array_equal(session.store.read(0, 0, *session.level_shape, which="edits"), edits)
    assert section.generator_folder == folder  # the finished generator stays in use
    assert bar.value() < 5000
    assert len(list((session.folder / GENERATORS).glob("run-*/generator"))) == 1
    assert len(list((session.folder / GENERATORS).glob("run-*"))) == 2  # the cancelled run is kept apart


def test_a_generator_for_other_classes_is_refused(make_napari_viewer, qtbot, tmp_path, scene):
    viewer = make_napari_viewer()
    widget, section = _dock(viewer, qtbot, tmp_path, scene)
    other = tiny_generator(tmp_path, class_ids=[0, 1, 2], class_names=["bg", "gland", "stroma"], name="glands")
    assert _open_generator(qtbot, section, other) is None
    text = section.status.text()
    assert text.startswith("Error: This generator was trained for other classes (0 (bg), 1 (gland), 2 (stroma))")
    assert "Train a generator on your labels" in text
    assert section.generator_folder is None
    # Generate without a generator says what to do; with the refused one set anyway, it refuses too
    assert _generate(qtbot, section, 1) is None
    assert "No generator yet" in section.status.text()
    section.generator_folder = other
    assert _generate(qtbot, section, 1) is None
    assert "trained for other classes" in section.status.text()
    assert not (widget.controller.session.folder / SYNTHETIC).exists()
