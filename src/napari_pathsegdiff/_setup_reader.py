"""Make napari open slides with this plugin without asking which reader to use.

napari's built-in reader also claims ``*.tif``/``*.tiff`` (and any plugin may claim
``*.svs``); with several candidate readers napari asks the user to choose, unless its
settings name a preferred reader for a matching filename pattern
(``settings.plugins.extension2reader``, the table shown in Preferences > Plugins > File
extension readers). This module adds this plugin as the preferred reader for each of its
manifest's patterns that has no preference yet; a pattern the user already assigned to
another plugin is left alone. napari saves the settings file when they change.

Run it once after installing (``make setup`` does)::

    python -m napari_pathsegdiff._setup_reader
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib.resources import files


@dataclass
class ReaderPreferences:
    """What :func:`prefer_plugin_reader` did, per filename pattern."""

    added: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    kept_other: dict[str, str] = field(default_factory=dict)


def manifest_reader_patterns() -> tuple[str, list[str]]:
    """The plugin name and the filename patterns of its readers, from ``napari.yaml``."""
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(str(files("napari_pathsegdiff") / "napari.yaml"))
    patterns = [p for reader in manifest.contributions.readers or [] for p in reader.filename_patterns]
    return manifest.name, list(dict.fromkeys(patterns))


def preference_patterns(patterns: list[str]) -> list[str]:
    """The patterns, then their upper-case forms: napari matches preferences case-sensitively
    (``SLIDE.SVS`` does not match ``*.svs``), while it offers readers case-insensitively."""
    return list(dict.fromkeys([*patterns, *(p.upper() for p in patterns)]))


def prefer_plugin_reader(settings=None) -> ReaderPreferences:
    """Make this plugin the preferred reader for its patterns (and their upper-case forms)
    that have no preference yet.

    Parameters
    ----------
    settings : napari.settings.NapariSettings, optional
        The settings to change; by default napari's global settings (saved to the user's
        settings file).

    Returns
    -------
    ReaderPreferences
        The patterns added, those already set to this plugin, and those kept for another.
    """
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    plugin, patterns = manifest_reader_patterns()
    patterns = preference_patterns(patterns)
    current = dict(settings.plugins.extension2reader)
    result = ReaderPreferences()
    for pattern in patterns:
        owner = current.get(pattern)
        if owner is None:
            current[pattern] = plugin
            result.added.append(pattern)
        elif owner == plugin:
            result.already.append(pattern)
        else:
            result.kept_other[pattern] = owner
    if result.added:
        settings.plugins.extension2reader = current
    return result


def main() -> int:
    """Set the preference in the user's napari settings and print what changed."""
    from napari.settings import get_settings

    settings = get_settings()
    result = prefer_plugin_reader(settings)
    where = settings.config_path or "not saved: napari has no settings file here"
    if result.added:
        print(f"napari-pathsegdiff is now the preferred reader for {' '.join(result.added)} ({where})")
    elif result.already:
        print(f"napari-pathsegdiff is already the preferred reader for its slide formats ({where})")
    for pattern, owner in result.kept_other.items():
        print(f"kept your preference {pattern} -> {owner}; use viewer.open(path, plugin='napari-pathsegdiff')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
