"""Shared core of the handwriting recogniser: labels, preprocessing, manifests, stores, wire shapes.

Imports only numpy, pillow and h5py, so every part (edge, trainer, server) can use it.
"""

__version__ = "0.1.0"
