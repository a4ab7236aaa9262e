"""dip.schedule"""
