import sys

from napari_pathsegdiff.cli import main

sys.exit(main())
