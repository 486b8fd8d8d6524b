//! Reference CPU backend: the whole DS4 forward pass, readable top to bottom, multithreaded with rayon.
