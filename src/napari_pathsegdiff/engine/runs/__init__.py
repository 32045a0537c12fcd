"""Long training runs with run folders: the backbone, the style generator, and generation."""
