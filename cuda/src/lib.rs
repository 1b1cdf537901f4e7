//! CUDA backend (through `cust`). CPU-only builds never need CUDA.
