"""The shared vocabulary every other part of model/ speaks: roles, dates, the date-pairing rule,
grids, the callback contract, and the spatial degradation both the simulation and the baselines use.

Nothing here imports from another part of model/.
"""
