"""distill.labels"""
