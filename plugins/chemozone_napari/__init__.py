"""napari plugin for chemozone (npe2). Holds no science: widgets call chemozone functions."""
