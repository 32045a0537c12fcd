"""Engine: predict a region or a slide, train a head, generate tiles. Imports core and models."""
