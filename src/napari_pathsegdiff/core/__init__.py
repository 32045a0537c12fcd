"""Pure compute: regions, slides, tiling, label store, metrics (numpy, dask, zarr, tifffile)."""
