"""dip.viz"""
