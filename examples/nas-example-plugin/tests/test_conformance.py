"""The example plugin under the nas conformance kit: what a plugin package's own test file looks like.

Run from this folder with the plugin installed: ``pytest tests``.
"""

from nas.testing import AttentionConformance


class TestCosineAttention(AttentionConformance):
    names = ["cosine"]  # only this package's block (default: every registered attention block)
    example_spaces = {"cosine": {"init_scale": {"low": 1.0, "high": 30.0, "log": True}}}
