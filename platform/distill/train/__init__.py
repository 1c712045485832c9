"""distill.train"""
