"""Inference on a region: tile features and head predictions stitched over a grid."""
