"""dip.planner"""
