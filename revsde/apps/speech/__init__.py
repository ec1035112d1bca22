"""SGMSE+-style speech enhancement: the model (``model``: ``SpeechNet``, build, load, export),
``revsde enhance`` (``enhance``), training (``train``), the synthetic corpus (``data``, ``noise``,
``text``, ``espeak``), evaluation (``eval``) and ``revsde bench speech`` (``bench``). Inference never
imports training."""
