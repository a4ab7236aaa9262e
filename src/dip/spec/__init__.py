"""dip.spec"""
