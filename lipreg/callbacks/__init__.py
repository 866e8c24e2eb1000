"""Thin callbacks that drive the schedules of the functional core and save their own state."""

from lipreg.callbacks.regression_plot import RegressionPlot

__all__ = ["RegressionPlot"]
