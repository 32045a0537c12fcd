"""Work that the widget runs in thread workers: opening a slide's session, loading features.

These functions import the engine and torch only when called, inside the worker thread.
"""

from __future__ import annotations

from pathlib import Path


def open_session_work(path, *, folder, root, extractor, remember: bool = False):
    """Open the slide and its session (a progress generator); a new session gets the shipped
    demo head when the default backbone is installed, and a remembered ``folder`` when the
    user picked it (``remember``)."""
    from ..core.progress import Progress
    from ..core.slide import open_slide
    from ..engine.session.annotation import AnnotationSession
    from ..engine.session.class_presets import preset
    from ..engine.session.session_folder import HEAD, session_folder_for
    from ..engine.shipped_models import default_backbone_installed, demo_head_folder

    yield Progress("open", 0, 1, "opening the slide")
    slide = open_slide(path)
    folder = Path(folder) if folder is not None else session_folder_for(slide, root=root)
    head = None
    demo = demo_head_folder()
    if not (folder / HEAD).is_dir() and demo is not None and default_backbone_installed() and (
        extractor is None or extractor.kind == "diffusion"
    ):
        from ..models.heads import load_head

        head = load_head(demo)
    session = AnnotationSession.open(slide, folder=folder, extractor=extractor, head=head,
                                     classes=None if head is not None else _initial_classes(folder, preset))
    if remember:
        from ..engine.session.session_folder import remember_folder

        remember_folder(slide.identity, folder, root=root)
    if session.extractor is None:
        yield Progress("open", 0, 1, "loading the features")
        session.set_extractor(_default_extractor())
    yield Progress("open", 1, 1, "ready")
    return session


def _initial_classes(folder: Path, preset):
    """The *tissue* preset for a new store; None keeps the classes of an existing one."""
    from ..engine.session.session_folder import LABELS

    return None if (folder / LABELS).exists() else preset("tissue")


def _default_extractor():
    """The default backbone's features when it is installed, else the classic filter bank."""
    from ..engine.shipped_models import default_backbone_installed
    from ..models.features import make_extractor

    if default_backbone_installed():
        return make_extractor("diffusion", backbone="default", device="auto")
    return make_extractor("classic")


def extractor_work(choice: str, folder, device: str):
    """Build the features ``choice`` (see ``feature_choices``), probing the model here."""
    from ..core.progress import Progress
    from ..models.features import make_extractor

    yield Progress("features", 0, 1, f"loading {choice}")
    if choice not in ("default backbone", "backbone folder"):  # a kind of the registry
        return make_extractor(choice, device=device)
    spec = "default" if choice == "default backbone" else str(folder)
    extractor = make_extractor("diffusion", backbone=spec, device=device)
    extractor.channels  # noqa: B018 - probe the model here, in the worker
    return extractor
