#!/usr/bin/env bash
# Install the package without its GUI extra in a fresh virtual environment and segment a part of
# the bundled sample slide with segment-slide: the batch path needs neither napari nor Qt.
#   usage: scripts/check-batch-without-gui.sh [VENV_DIR]   (default .venv-batch)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-batch}
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
rm -rf "$VENV"
$PYTHON -m venv "$VENV"
VENV=$(cd "$VENV" && pwd)
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$TORCH"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check .
for gui in napari qtpy magicgui PyQt6 vispy; do
  if "$VENV/bin/python" -c "import $gui" 2>/dev/null; then
    echo "error: $gui was installed without the gui extra" >&2; exit 1
  fi
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
sample=$("$VENV/bin/python" -c "from napari_pathsegdiff._sample_data import sample_slide_path; print(sample_slide_path())")
head=$("$VENV/bin/python" -c "from napari_pathsegdiff.engine.shipped_models import demo_head_folder; print(demo_head_folder())")
(cd "$out" && "$VENV/bin/pathsegdiff" segment-slide "$sample" --head "$head" --out run \
  --region 0 0 512 512 --quiet)
name=$(basename "$sample" .svs)
for f in labels.ome.zarr classes.geojson summary.json; do
  test -e "$out/run/$name/$f" || { echo "error: segment-slide wrote no $f" >&2; ls -R "$out/run" >&2; exit 1; }
done
echo "batch without napari or Qt: segment-slide wrote $(ls "$out/run/$name" | tr '\n' ' ')"
