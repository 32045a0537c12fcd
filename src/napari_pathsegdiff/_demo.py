"""napari with the plugin on a slide: the bundled sample, or a slide given on the command line.

Usage::

    python -m napari_pathsegdiff._demo [--screenshot FILE] [PATH]

With ``--screenshot`` the window is shown, rendered, saved to FILE (PNG) and closed, so the
demo also runs with no person watching (under Xvfb). Otherwise napari runs until closed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PLUGIN = "napari-pathsegdiff"
WIDGET = "PathSegDiff"
SAMPLE_KEY = "cmu1_small_region"
SETTLE_S = 2.0


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
    viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    viewer.window.resize(1400, 900)
    viewer.canvas.overlays.scale_bar.visible = True  # in µm when the slide's µm/px is known
    viewer.reset_view()

    if args.screenshot is not None:
        _screenshot_when_settled(viewer, args.screenshot, after_s=SETTLE_S)
    napari.run()
    return 0


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
