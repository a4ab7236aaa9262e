"""dip.cli"""
