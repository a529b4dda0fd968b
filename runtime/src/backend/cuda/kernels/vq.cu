// vq kernels (being written)
