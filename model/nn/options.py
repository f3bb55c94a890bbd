"""The choices offered for the network, without importing torch (the algorithms list them in their
parameters before torch is needed): devices, CPU threads and kernel sets."""

# DEVICE: what the user may type (model/nn/device.py checks it and resolves it to a torch device).
#   auto    the first CUDA GPU (cuda:0) when torch sees one, else Apple's MPS when available, else the CPU
#   cpu     the CPU (float32: the same seed gives the same model bit for bit)
#   cuda    the first CUDA GPU, cuda:0
#   cuda:N  CUDA GPU number N (0, 1, ... in torch's order, CUDA_VISIBLE_DEVICES applies)
#   mps     the GPU of a Mac with Apple silicon (a torch build with MPS)
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DEFAULT_DEVICE = "auto"
# THREADS: CPU threads torch uses (torch.set_num_threads); 0 = torch's default (every core).
DEFAULT_THREADS = 0
MAX_THREADS = 1024
# Kernel sizes of the groups of a multi-scale residual block; the set's size is its cardinality.
KERNEL_SETS = {"1": (1,), "1/3": (1, 3), "1/3/5": (1, 3, 5)}
