"""distill.quant"""
