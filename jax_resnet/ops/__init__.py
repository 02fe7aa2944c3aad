"""Hand-written gradients and kernels: BatchNorm, canonical-gradient
convolutions and the project's C++ CPU kernels with their build."""
