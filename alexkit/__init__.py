"""alexkit: AlexNet (Krizhevsky, Sutskever, Hinton 2012) on ImageNet, fed by FFCV and DALI."""

__version__ = "0.1.0"
