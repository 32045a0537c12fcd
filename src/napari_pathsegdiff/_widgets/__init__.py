"""Qt widgets of the plugin (the only Qt code of the package)."""

from .segmentation_widget import SegmentationWidget

__all__ = ["SegmentationWidget"]
