"""fer: facial expression recognition with MobileNetV3, PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
