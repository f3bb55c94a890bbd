"""The choices offered for the network, without importing torch (the algorithms list them in their
parameters before torch is needed): devices and kernel sets."""

DEVICES = ("auto", "cpu", "cuda")
# Kernel sizes of the groups of a multi-scale residual block; the set's size is its cardinality.
KERNEL_SETS = {"1": (1,), "1/3": (1, 3), "1/3/5": (1, 3, 5)}
