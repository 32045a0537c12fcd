"""napari-pathsegdiff: segment H&E histopathology with latent diffusion features.

Importing the package is cheap: it imports neither torch nor Qt. The layers are
``core`` (numpy, dask, zarr, tifffile), ``models`` (torch, diffusers), ``engine``
(orchestration), and on top ``cli`` and the napari contributions.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
