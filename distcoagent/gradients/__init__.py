"""Gradient verification: exact J and dJ/dtheta for tabular networks, ACPGT and
finite-difference estimates at frozen parameters, and ``gradcheck`` that compares them."""
from .common import cosine_distance, flatten, norms
from .estimators import Estimate, GradientRecorder, acpgt_estimate, fd_estimate, j_estimate
from .exact import ExactResult, NotExactError, exact, exact_central_differences
from .gradcheck import GradcheckReport, gradcheck

__all__ = ["Estimate", "ExactResult", "GradcheckReport", "GradientRecorder", "NotExactError",
           "acpgt_estimate", "cosine_distance", "exact", "exact_central_differences", "fd_estimate",
           "flatten", "gradcheck", "j_estimate", "norms"]
