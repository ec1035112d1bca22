"""The project's own networks and analytic models (``gmm``: Gaussian mixtures with an exact score)."""
