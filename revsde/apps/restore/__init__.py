"""MR-diffusion image restoration (IR-SDE): the model (``model``: build, load, export), ``revsde restore``
(``restore``), training (``train``), data (``data``), evaluation (``eval``) and ``revsde bench restore``
(``bench``). Inference never imports training."""
