"""Attributes: linear probes over the sentence-embedding space, and the plugin packages that ship them."""
