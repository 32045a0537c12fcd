"""Models: backbones, feature extractors, heads, generators (torch, diffusers). Imports core at most."""
