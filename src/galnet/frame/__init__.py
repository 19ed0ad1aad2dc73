"""Frames to catalogue: detection, adaptive cutouts, the network, neighbours modelled, the
guarded refine, point sources and misfits (:func:`run_frame`; ``galnet predict --frame
IMAGE --detect``)."""

from galnet.frame.pipeline import run_frame

__all__ = ["run_frame"]
