"""distill.prune"""
