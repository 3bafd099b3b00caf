"""fastmlp: an autograd-free MLP engine with hand-written kernels.

Every layer has a hand-written forward and backward; the fused parts run as
Numba kernels on the CPU and CUDA C kernels (through CuPy) on NVIDIA GPUs.
"""
from .augment import Augment
from .backend import devices
from . import schedules
from .callbacks import (Callback, CSVLogger, EarlyStopping, History, LambdaCallback, LearningRateScheduler,
                        ModelCheckpoint, NonFiniteLossError, ReduceLROnPlateau, TerminateOnNaN)
from .compare import compare  # the function; its helpers: from fastmlp.compare import table
from .conv import Conv2D, Flatten, MaxPool2D
from .gradcheck import gradcheck, gradcheck_layer
from .layers import Dense, LeakyReLU, ReLU, Sigmoid, Tanh, activation
from .losses import BinaryCrossEntropy, MeanSquaredError, SoftmaxCrossEntropy
from .model import Sequential, load_model
from .normalization import BatchNorm, Dropout
from .optimizers import SGD, Adam, AdamW, RMSprop
from .version import __version__

__all__ = [
    "Sequential", "Dense", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "activation",
    "Conv2D", "MaxPool2D", "Flatten", "BatchNorm", "Dropout",
    "BinaryCrossEntropy", "SoftmaxCrossEntropy", "MeanSquaredError", "SGD", "Adam", "AdamW", "RMSprop",
    "schedules", "History", "Callback", "EarlyStopping", "TerminateOnNaN", "NonFiniteLossError",
    "ModelCheckpoint", "ReduceLROnPlateau", "CSVLogger", "LearningRateScheduler", "LambdaCallback",
    "gradcheck", "gradcheck_layer", "devices", "Augment", "load_model", "compare", "__version__",
]
