"""Whole-slide batch: the block plan, the per-block worker, the dask runner and the outputs."""
