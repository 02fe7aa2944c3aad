"""Networks: blocks, shared layers, the residual backbone, each family and
the registry (``registry.resolve``)."""
