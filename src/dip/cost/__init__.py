"""dip.cost"""
