"""tnc's curvature behind other libraries' interfaces, each an optional extra that only its own module imports
(importing this package imports none of them):

    laplace.py  TncGGN, a curvature back end for laplace-torch (`pip install tncompiler[laplace]`)
    opacus.py   tnc's per-example gradients as Opacus' samplers, for DP-SGD (`pip install tncompiler[opacus]`)
"""
