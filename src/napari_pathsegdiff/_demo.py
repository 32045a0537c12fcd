"""napari with the plugin on a slide: the bundled sample, or a slide given on the command line.

Usage::

    python -m napari_pathsegdiff._demo [--screenshot FILE] [PATH]

When the default backbone and the demo head ship with the package, the widget segments the
visible region at once ("Segment view"); otherwise the widget says that no default model is
installed (and shows no prediction). With ``--screenshot`` the window is shown, rendered,
saved to FILE (PNG) once the prediction is on screen, and closed, so the demo also runs with no
person watching (under Xvfb). Otherwise napari runs until closed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PLUGIN = "napari-pathsegdiff"
WIDGET = "PathSegDiff"
SAMPLE_KEY = "cmu1_small_region"
SETTLE_S = 2.0
SEGMENT_TIMEOUT_S = 540.0
NO_MODEL_NOTE = (
    "No default model is installed in this copy of napari-pathsegdiff, so nothing is segmented "
    "yet. Press \"Segment view\", paint a few strokes of two classes or more, and press "
    "\"Train on my edits\"; or choose a backbone folder in Model."
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m napari_pathsegdiff._demo",
        description="Open a slide (default: the bundled sample) in napari with the PathSegDiff dock widget.",
    )
    parser.add_argument("path", nargs="?", type=Path, help="a slide file (.svs, .tif, .ndpi, ...)")
    parser.add_argument("--screenshot", type=Path, metavar="FILE", help="save the window to FILE and quit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.path is not None and not args.path.is_file():
        print(f"error: slide file not found: {args.path}", file=sys.stderr)
        return 2

    import napari

    viewer = napari.Viewer(title="napari-pathsegdiff", show=True)
    if args.path is None:
        viewer.open_sample(PLUGIN, SAMPLE_KEY)
    else:
        viewer.open(str(args.path), plugin=PLUGIN)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    viewer.window.resize(1400, 900)
    viewer.canvas.overlays.scale_bar.visible = True  # in µm when the slide's µm/px is known
    viewer.reset_view()

    if _default_model_installed():
        _segment_then(viewer, widget, args.screenshot)
    else:
        widget.show_note(NO_MODEL_NOTE)
        if args.screenshot is not None:
            _screenshot_when_settled(viewer, args.screenshot, after_s=SETTLE_S)
    napari.run()
    return 0


def _default_model_installed() -> bool:
    from .engine.shipped_models import default_backbone_installed, demo_head_folder

    return default_backbone_installed() and demo_head_folder() is not None


def _segment_then(viewer, widget, screenshot: Path | None) -> None:
    """Press "Segment view" once the window is drawn; save the screenshot when the labels are
    on screen (or when segmenting failed or took too long)."""
    from qtpy.QtCore import QTimer

    controller = widget.controller
    done = []

    def shoot_once(*_):
        if screenshot is not None and not done:
            done.append(True)
            _screenshot_when_settled(viewer, screenshot, after_s=SETTLE_S)

    controller.segmented.connect(shoot_once)  # labels on screen
    controller.message.connect(lambda section, text: section == "segment" and shoot_once())  # or why not
    QTimer.singleShot(int(SETTLE_S * 1000), controller.segment_view)
    if screenshot is not None:
        QTimer.singleShot(int(SEGMENT_TIMEOUT_S * 1000), shoot_once)


def _screenshot_when_settled(viewer, path: Path, *, after_s: float) -> None:
    """Once the event loop has run for ``after_s`` seconds (window painted, visible tiles
    loaded), save the window to ``path`` and close napari."""
    from qtpy.QtCore import QTimer

    def shoot():
        viewer.screenshot(path=str(path), canvas_only=False)
        print(f"saved {path}")
        viewer.close()

    QTimer.singleShot(int(after_s * 1000), shoot)


if __name__ == "__main__":
    sys.exit(main())
