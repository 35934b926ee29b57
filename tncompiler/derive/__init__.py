"""Derived diagrams: derivatives, KFAC factors, slices and samples, the registry of transforms, autograd specs."""
