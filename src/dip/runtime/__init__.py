"""dip.runtime"""
