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
from .export_onnx import export_onnx  # the function; per-layer exporters: from fastmlp.export_onnx import exporter
from .gradcheck import gradcheck, gradcheck_layer
from .inference import release_prediction_threads
from .layers import Dense, LeakyReLU, ReLU, Sigmoid, Tanh, activation
from .losses import BinaryCrossEntropy, MeanSquaredError, SoftmaxCrossEntropy
from .model import Sequential, load_model
from .sweep import sweep  # the function; grid, train_mlp, load_toml: from fastmlp.sweep import ...
from .normalization import BatchNorm, Dropout
from .optimizers import SGD, Adam, AdamW, RMSprop
from .preprocessing import scale_to_unit
from .pooling import AveragePooling2D, AvgPool2D, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D
from .version import __version__
from . import distributed  # fm.distributed.init(); mpi4py is imported only under a launcher

__all__ = [
    "Sequential", "Dense", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "activation",
    "Conv2D", "MaxPool2D", "Flatten", "BatchNorm", "Dropout", "AvgPool2D", "GlobalAveragePooling2D",
    "GlobalMaxPooling2D", "MaxPooling2D", "AveragePooling2D",
    "BinaryCrossEntropy", "SoftmaxCrossEntropy", "MeanSquaredError", "SGD", "Adam", "AdamW", "RMSprop",
    "schedules", "History", "Callback", "EarlyStopping", "TerminateOnNaN", "NonFiniteLossError",
    "ModelCheckpoint", "ReduceLROnPlateau", "CSVLogger", "LearningRateScheduler", "LambdaCallback",
    "gradcheck", "gradcheck_layer", "export_onnx", "devices", "Augment", "load_model", "compare", "sweep",
    "distributed", "scale_to_unit", "release_prediction_threads", "__version__",
]
