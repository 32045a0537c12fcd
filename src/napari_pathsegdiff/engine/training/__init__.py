"""Head training: labelled tiles, one fitter per head kind, and auto selection."""
