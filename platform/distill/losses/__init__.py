"""distill.losses"""
