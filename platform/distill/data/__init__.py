"""Corpus readers (Ray Data), tokenization, packing, held-out split by document."""
