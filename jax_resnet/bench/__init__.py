"""Speed: train/eval throughput against PyTorch and the per-op profile."""
