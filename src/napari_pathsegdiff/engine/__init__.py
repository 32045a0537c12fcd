"""Engine: imports core and models, in wings.

``inference``  features and head predictions over a region
``training``   labelled tiles to a head (one fitter per kind, auto selection)
``runs``       long resumable runs: backbone and generator training, generation
``session``    one slide's annotation session (labels, edits, exports)
``batch``      whole slides on dask (block plan, worker, outputs)
"""
