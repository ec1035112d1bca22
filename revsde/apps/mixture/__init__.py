"""The analytic Gaussian-mixture tasks, whose exact distribution is known: sampling the built-in 2-D
mixture (``sample``), quality versus NFE against diffusers' schedulers (``problems``, ``configs``,
``bench``), and the same inside one diffusers pipeline (``pipeline_bench``)."""
