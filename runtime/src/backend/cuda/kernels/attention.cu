// attention kernels (being written)
