"""napari with the plugin on a slide: the bundled sample, or a slide given on the command line.

Usage::

    python -m napari_pathsegdiff._widgets._demo [--screenshot FILE] [PATH]

When the default backbone and the demo head ship with the package, the widget segments the
visible region at once ("Segment view"); otherwise the widget says that no default model is
installed (and shows no prediction). A slide whose session is already on disk (a second run)
reopens it first; the widget runs "Segment view" as soon as it is open.

With ``--screenshot`` the window is shown, and saved to FILE (PNG) once the labels are drawn,
then napari closes, so the demo also runs with no person watching (under Xvfb). When nothing
could be segmented (an error, or no result within ``SEGMENT_TIMEOUT_S``) the reason is printed,
the window is saved as it is, and the exit status is 1. Otherwise napari runs until closed.
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
DRAW_TIMEOUT_S = 30.0
POLL_S = 0.2
NO_MODEL_NOTE = (
    "No default model is installed in this copy of napari-pathsegdiff, so nothing is segmented "
    "yet. Press \"Segment view\", paint a few strokes of two classes or more, and press "
    "\"Train on my edits\"; or choose a backbone folder in Model."
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m napari_pathsegdiff._widgets._demo",
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
    viewer.window.resize(1280, 800)  # the dock fits a 1280-px-wide window
    viewer.canvas.overlays.scale_bar.visible = True  # in µm when the slide's µm/px is known
    viewer.reset_view()

    outcome = DemoOutcome()
    if _default_model_installed():
        _segment_then(viewer, widget, args.screenshot, outcome)
    else:
        widget.show_note(NO_MODEL_NOTE)
        if args.screenshot is not None:
            _screenshot_when_settled(viewer, args.screenshot, after_s=SETTLE_S)
    napari.run()
    return 0 if outcome.failure is None else 1


class DemoOutcome:
    """How the demo's segmentation ended: ``failure`` is None while it is running or once the
    labels are on screen, else the reason nothing is shown."""

    def __init__(self):
        self.segmented = False
        self.failure: str | None = None
        self.shot = False


FAILURE_STARTS = ("Error", "Not run", "No ")
"""Messages of the Segment and Model sections that end the demo without a segmentation."""


def _default_model_installed() -> bool:
    from ..engine.shipped_models import default_backbone_installed, demo_head_folder

    return default_backbone_installed() and demo_head_folder() is not None


def _segment_then(viewer, widget, screenshot: Path | None, outcome: DemoOutcome) -> None:
    """Press "Segment view" once the window is drawn (the click is queued by the widget while a
    saved session is still reopening); save the screenshot once the labels are drawn, or print
    why there are none (an error, the segmentation ending without a result, or a time-out)."""
    from qtpy.QtCore import QTimer

    controller = widget.controller

    def shoot_once() -> None:
        if screenshot is not None and not outcome.shot:
            outcome.shot = True
            _screenshot_when_drawn(viewer, screenshot)

    def fail(reason: str) -> None:
        if outcome.segmented or outcome.failure is not None:
            return
        outcome.failure = reason
        print(f"demo: no segmentation to show: {reason}", file=sys.stderr)
        shoot_once()

    def segmented(result) -> None:
        if outcome.failure is None and not outcome.segmented:
            outcome.segmented = True
            r = result.region
            print(f"demo: segmented {r.width}x{r.height} px in {result.seconds:.1f} s")
            shoot_once()

    def message(section: str, text: str) -> None:
        if section in ("segment", "model") and text.startswith(FAILURE_STARTS):
            fail(text)

    def busy(name: str, on: bool) -> None:
        if name == "segment" and not on and not outcome.segmented:
            fail("the segmentation ended without a result")

    controller.segmented.connect(segmented)
    controller.message.connect(message)
    controller.busy.connect(busy)
    QTimer.singleShot(int(SETTLE_S * 1000), controller.segment_view)
    QTimer.singleShot(int(SEGMENT_TIMEOUT_S * 1000),
                      lambda: fail(f"no segmentation after {SEGMENT_TIMEOUT_S:.0f} s"))


def _screenshot_when_drawn(viewer, path: Path) -> None:
    """Save the window to ``path`` once every visible layer has loaded what it shows and the
    canvas has been painted, then close napari."""
    from qtpy.QtCore import QTimer

    waited = [0.0]

    def poll() -> None:
        loaded = all(getattr(layer, "loaded", True) for layer in viewer.layers if layer.visible)
        if loaded or waited[0] >= DRAW_TIMEOUT_S:
            if not loaded:
                print(f"demo: layers still loading after {DRAW_TIMEOUT_S:.0f} s", file=sys.stderr)
            _screenshot_when_settled(viewer, path, after_s=SETTLE_S)
            return
        waited[0] += POLL_S
        QTimer.singleShot(int(POLL_S * 1000), poll)

    poll()


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
