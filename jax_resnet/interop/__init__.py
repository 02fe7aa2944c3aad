"""PyTorch interop: the checkpoint importer and the reference networks."""
