"""distill.serve"""
