"""Transformations of diagrams: derivatives (`autodiff`) and Kronecker factors (`kfac`)."""
