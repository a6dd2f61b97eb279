"""edgeseg: train, export and run semantic segmentation networks on edge and desktop GPUs."""

__version__ = "0.1.0"
