"""selflabel: semi-supervised abdominal CT segmentation by self-labelling (Zhu and Tian, FLARE 2022)."""

__version__ = "0.1.0"
