"""fervid: batch facial-emotion analysis of video folders (Ray Data, decord, InsightFace, ViT)."""

__version__ = "0.1.0"
