"""The AstroNN distance network's sizes, shared by the network and its fused dropout kernel."""

N_PIXELS = 7514  # continuum-normalized APOGEE spectrum with the detector gaps removed
KERNEL = 8  # both convolutions
POOL = 4  # max-pool after conv2
DROPOUT = 0.3  # MC dropout rate of every dropout layer
N_DENSE = 192  # dense_1's units
