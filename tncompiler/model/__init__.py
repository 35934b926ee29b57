"""tnc for whole models: the `.tnd` text of PyTorch layers, KFAC's factors of a model, a KFAC preconditioner and
sampled (tensor-dropout) weight gradients, on one process or many.

    layers.py          the text of nn.Linear / nn.Conv*d / nn.ConvTranspose*d, compiled and cached
    calls.py           compile_layer: the compiled functions, y called as the module is
    cache.py           compiled modules in memory and on disk
    losses.py          the loss's output cotangents for each Fisher type
    factors.py         kfac_factors: the factors of a model over a data set
    preconditioner.py  KFAC: running factors, damped inverses, preconditioned gradients
    curvature*.py      curvature: per-example gradients, norms, GGN diagonals of a model, from layer diagrams
    operator.py        KFACOperator: the factors as a linear operator (products, inverses, trace, logdet, EKFAC)
    sampling.py        sampled(): tensor-dropout weight gradients
    distributed.py     sums and counts across processes
"""

from tncompiler.model.calls import compile_layer
from tncompiler.model.curvature import curvature
from tncompiler.model.factors import kfac_factors
from tncompiler.model.layers import layer_source
from tncompiler.model.operator import KFACOperator
from tncompiler.model.preconditioner import KFAC
from tncompiler.model.sampling import sampled

__all__ = ["KFAC", "KFACOperator", "compile_layer", "curvature", "kfac_factors", "layer_source", "sampled"]
