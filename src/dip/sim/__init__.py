"""dip.sim"""
