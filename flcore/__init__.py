"""flcore: label-flipping data poisoning in federated learning (Tolpegin et al., ESORICS 2020)."""

__version__ = "0.1.0"
