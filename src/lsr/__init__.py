"""lsr: label super-resolution for cancer segmentation from low-resolution labels.

The engine of napari-lsr. Importable without Qt or napari.
"""

__version__ = "0.1.0"
