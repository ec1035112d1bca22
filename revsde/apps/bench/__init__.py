"""The benchmark harness behind ``revsde bench``: cached cells and seed shards (``harness``), what a
cache's settings are made of (``fingerprints``), and speed as ratios against peers (``speed``)."""
