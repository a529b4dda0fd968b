// sampler kernels (being written)
