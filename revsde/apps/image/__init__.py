"""The built-in unconditional digits models (DDPM and rectified flow: ``model``, ``train``), their data
(``data``), the noise-level classifier that ``dmcmc`` needs (``noise_classifier``), the feature spaces
samples are scored in (``scores``) and ``revsde bench image`` (``configs``, ``bench``)."""
