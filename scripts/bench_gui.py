"""Time to labels on screen in napari: "Segment view" of a 1280x1024 region of the sample slide.

Runs the real GUI (napari window, the PathSegDiff dock widget, its worker thread), so it needs
a display; with none, run it under Xvfb::

    xvfb-run -a -s "-screen 0 2400x1400x24" python scripts/bench_gui.py [--features diffusion classic]

For each feature set (``diffusion``: the shipped default backbone and demo head; ``classic``:
a head trained first, on the demo head's labels of a small region, through the widget's own
"Train on my edits" path, so the timed segmentations use it), the camera is put on a 1280 x 1024
px region of the bundled sample slide and the widget segments it, as "Segment view" does. Three
times are printed per run, all from the moment segmenting is asked for:

- *labels in the layer*: the worker is done and the widget has put the labels into the napari
  Labels layers (the edit window and the overview) — the widget's ``segmented`` signal;
- *on screen*: the canvas has then drawn a frame (``viewer.screenshot(canvas_only=True)`` renders
  the scene) and that frame holds the labels' colours;
- the region is segmented twice: with an empty feature cache, then again with the cache warm;
- then "Train on my edits" after 10 more strokes in the view: the time to the trained head and
  to the view segmented again with it;
- then the viewer is closed and the slide opened again in a new one: the time from opening the
  slide to its session ready (head and features loaded, the view kept in the session folder
  restored), and "Segment view" of the restored view (a new session starts with an empty
  feature cache).

Before timing, a small region elsewhere on the slide is segmented once, so the session is open
and the models are loaded (what a user has after their first click).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PLUGIN = "napari-pathsegdiff"
WIDGET = "PathSegDiff"
SAMPLE_KEY = "cmu1_small_region"
REGION = (800, 400, 1024, 1280)  # y, x, height, width: the view of scripts/bench_annotation.py
WARMUP = (100, 100, 256, 256)
TIMEOUT_S = float(os.environ.get("BENCH_GUI_TIMEOUT", 900))


def say(*args) -> None:
    print(*args, flush=True)


def wait_for(app, signal, *, timeout: float = TIMEOUT_S, start=None, when=lambda *a: True):
    """Run the Qt event loop until ``signal`` fires with arguments that satisfy ``when``
    (returns the first argument); ``start()`` is called after connecting. The loop waits
    idle, as napari's own does: no polling that would compete with the worker thread."""
    from qtpy.QtCore import QEventLoop, QTimer

    got = []
    loop = QEventLoop()

    def seen(*a):
        if os.environ.get("BENCH_GUI_DEBUG"):
            say("   signal:", a)
        if when(*a):
            got.append(a)
            loop.quit()

    signal.connect(seen)
    timer = QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(loop.quit)
    timer.start(int(timeout * 1000))
    try:
        if start is not None:
            start()
        if not got:
            loop.exec_()
    finally:
        timer.stop()
        signal.disconnect(seen)
    if not got:
        raise TimeoutError(f"no {signal} within {timeout:.0f} s")
    return got[0][0] if got[0] else None


def label_pixels_on_canvas(viewer, controller) -> int:
    """Canvas pixels the plugin's Labels layers change (a screenshot with them, one without)."""
    layers = [lay for lay in (controller.layers.window_layer, controller.layers.overview) if lay is not None]
    shown = viewer.screenshot(canvas_only=True, flash=False)
    for lay in layers:
        lay.visible = False
    hidden = viewer.screenshot(canvas_only=True, flash=False)
    for lay in layers:
        lay.visible = True
    return int((np.abs(shown.astype(int) - hidden.astype(int)).sum(-1) > 30).sum())


def timed_segment(app, viewer, controller, region) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    result = wait_for(app, controller.segmented, start=lambda: controller.segment_region(region))
    t_layer = time.perf_counter() - t0
    cpu = time.process_time() - c0
    shot = viewer.screenshot(canvas_only=True, flash=False)  # renders a frame of the scene
    t_screen = time.perf_counter() - t0
    return {"labels_in_layer_s": t_layer, "on_screen_s": t_screen, "engine_s": float(result.seconds), "cpu_s": cpu,
            "label_canvas_px": label_pixels_on_canvas(viewer, controller),
            "canvas_px": int(shot.shape[0] * shot.shape[1])}


def run_features(app, kind: str, store: Path) -> dict:
    import napari

    from napari_pathsegdiff._widgets._viewport import show_region, view_of
    from napari_pathsegdiff.core.region import Region

    viewer = napari.Viewer(title=f"bench {kind}", show=True)
    viewer.window.resize(2350, 1350)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    controller = widget.controller
    controller.store_root = store / kind  # a new, empty session folder (before the slide opens)
    if kind == "classic":
        from napari_pathsegdiff.models.features import make_extractor

        controller.use_extractor(make_extractor("classic"))
    viewer.open_sample(PLUGIN, SAMPLE_KEY)
    layer = viewer.layers[0]
    app.processEvents()
    y, x, h, w = WARMUP
    if controller.session is None:  # the widget opens the slide's session (a worker) unless it has already
        wait_for(app, controller.session_changed,
                 start=lambda: controller.running("open") or controller.with_session("segment", lambda: None))
    # without a head (classic) the view becomes an empty window to paint in
    wait_for(app, controller.message, start=lambda: controller.segment_region(Region(0, y, x, h, w)),
             when=lambda section, text: section == "segment" and text.startswith(("Segmented", "No trained head")))
    say(f"  {kind}: session open, {controller.session.extractor.identity}")
    if kind == "classic":
        train_classic_head(app, controller)
    y, x, h, w = REGION
    region = Region(0, y, x, h, w)
    show_region(viewer, layer, region, layer.metadata.get("downsamples", [1.0]), fill=1.0)
    for _ in range(20):
        app.processEvents()
    canvas = tuple(int(s) for s in viewer.canvas.size)
    runs = {"empty cache": timed_segment(app, viewer, controller, region),
            "warm cache": timed_segment(app, viewer, controller, region)}
    train = timed_train(app, controller, region)
    view = view_of(viewer, layer)
    viewer.close()
    return {"canvas": canvas, "runs": runs, "train": train, "reopen": timed_reopen(app, kind, store, view)}


def timed_reopen(app, kind: str, store: Path, view) -> dict:
    """Open the slide again in a new viewer: time to the session ready, how far the view that
    came back is from ``view`` (centre in level-0 px, zoom), and "Segment view" of it."""
    import napari

    from napari_pathsegdiff._widgets._viewport import view_of, visible_region

    viewer = napari.Viewer(title=f"bench {kind} reopened", show=True)
    viewer.window.resize(2350, 1350)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    controller = widget.controller
    controller.store_root = store / kind
    t0 = time.perf_counter()
    viewer.open_sample(PLUGIN, SAMPLE_KEY)
    if controller.session is None:
        wait_for(app, controller.session_changed, when=lambda *a: controller.session is not None)
    ready = time.perf_counter() - t0
    for _ in range(20):
        app.processEvents()
    (cy, cx), zoom = view_of(viewer, viewer.layers[0])
    (y0, x0), zoom0 = view
    off_px, zoom_ratio = max(abs(cy - y0), abs(cx - x0)), zoom / zoom0
    run = timed_segment(app, viewer, controller, visible_region(viewer, viewer.layers[0]))
    viewer.close()
    return {"ready_s": ready, "centre_off_px": off_px, "zoom_ratio": zoom_ratio, "segment": run}


def timed_train(app, controller, region) -> dict:
    """Time "Train on my edits" after 10 strokes painted in the view (16 x 160 px bands of the
    view's own labels, swapped to another class so the head has something to learn): time to
    the trained head, then to the view segmented again with it."""
    store = controller.session.store
    labels = store.read(region.y, region.x, region.height, region.width)
    ids = [c.id for c in controller.session.classes]
    for i in range(10):
        y, x = 40 + 90 * i, 100 + 100 * (i % 5)
        band = labels[y : y + 16, x : x + 160]
        swapped = np.asarray(ids, np.uint8)[(np.searchsorted(ids, band) + 1) % len(ids)]
        store.write_edits(region.y + y, region.x + x, swapped)
    got = {}
    t0 = time.perf_counter()
    controller.train_finished.connect(lambda outcome: got.setdefault("trained", time.perf_counter() - t0))
    result = wait_for(app, controller.segmented, start=controller.train)
    return {"trained_s": got.get("trained"), "resegmented_s": time.perf_counter() - t0,
            "segment_engine_s": float(result.seconds)}


def train_classic_head(app, controller) -> None:
    """A classic-features head for the demo head's classes, trained through the widget
    ("Train on my edits") on the demo head's labels of a 512 x 512 px region painted as edits;
    returns once the widget has segmented the view again after training."""
    from napari_pathsegdiff.core.label_store import ClassInfo
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.core.region import Region
    from napari_pathsegdiff.engine.inference.predict import predict_region
    from napari_pathsegdiff.engine.shipped_models import demo_head_folder
    from napari_pathsegdiff.models.features import make_extractor
    from napari_pathsegdiff.models.heads import load_head

    session = controller.session
    demo = load_head(demo_head_folder())
    y, x, h, w = 300, 1400, 512, 512
    labels = drive(predict_region(session.slide, Region(0, y, x, h, w), head=demo,
                                  extractor=make_extractor("diffusion")), show=False).labels
    assert controller.set_classes([ClassInfo(i, n, c) for i, n, c in
                                   zip(demo.class_ids, demo.class_names, demo.class_colors)])
    session.store.write_edits(y, x, np.asarray(labels, np.uint8))
    say(f"  classic: training a head on {h}x{w} px of edits (the demo head's labels)")
    outcome = wait_for(app, controller.train_finished, start=controller.train)
    say(f"  classic: head trained in {outcome.seconds:.1f} s (new head: {outcome.new_head})"
        + (f"; {outcome.note}" if getattr(outcome, "note", None) else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", nargs="+", default=["diffusion", "classic"], choices=("diffusion", "classic"))
    p.add_argument("--threads", type=int, help="torch CPU threads")
    args = p.parse_args()
    if not os.environ.get("DISPLAY"):
        raise SystemExit("No display: run under Xvfb (xvfb-run -a -s \"-screen 0 2400x1400x24\" python ...).")
    import torch
    from qtpy.QtWidgets import QApplication

    if args.threads:
        torch.set_num_threads(args.threads)
    import napari  # noqa: F401 - creates the Qt application on first viewer

    say(f"GUI benchmark, {datetime.date.today()}: napari {napari.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average "
        f"{os.getloadavg()[0]:.1f}")
    say("Command: xvfb-run -a -s \"-screen 0 2400x1400x24\" python scripts/bench_gui.py " + " ".join(sys.argv[1:]))
    from napari.qt import get_qapp

    app = get_qapp()
    assert isinstance(app, QApplication)
    y, x, h, w = REGION
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.features:
            out = run_features(app, kind, Path(tmp))
            say(f"{kind}: region {w}x{h} px at (y={y}, x={x}) of the sample slide, canvas {out['canvas'][1]}x{out['canvas'][0]}")
            for name, r in out["runs"].items():
                say(f"  {name}: labels in the layer {r['labels_in_layer_s']:.2f} s (engine {r['engine_s']:.2f} s), "
                    f"on screen {r['on_screen_s']:.2f} s; canvas pixels coloured by the labels: "
                    f"{r['label_canvas_px']} of {r['canvas_px']}; process CPU time {r['cpu_s']:.2f} s")
            t = out["train"]
            say(f"  Train on my edits (10 strokes of 16x160 px more): head trained {t['trained_s']:.2f} s, "
                f"view segmented again {t['resegmented_s']:.2f} s (that segmentation's engine {t['segment_engine_s']:.2f} s)")
            r = out["reopen"]
            s = r["segment"]
            say(f"  reopened in a new viewer: session ready {r['ready_s']:.2f} s after opening the slide, view "
                f"restored to {r['centre_off_px']:.2g} level-0 px of the centre and x{r['zoom_ratio']:.6f} the "
                f"zoom it had; Segment view: labels in the layer {s['labels_in_layer_s']:.2f} s "
                f"(engine {s['engine_s']:.2f} s), on screen {s['on_screen_s']:.2f} s")


if __name__ == "__main__":
    main()
