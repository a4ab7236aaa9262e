"""dip.data"""
