"""dip.bench"""
