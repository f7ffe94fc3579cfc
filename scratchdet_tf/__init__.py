"""scratchdet-tf: ScratchDet (Zhu et al., CVPR 2019) single-shot detectors trained from scratch."""

__version__ = "0.1.0"
