//! CUDA backend on cudarc: kernels compiled for sm_90a, decode as one CUDA graph.
