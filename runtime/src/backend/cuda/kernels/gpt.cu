// gpt kernels (being written)
