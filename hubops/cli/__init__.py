"""The `hubops` command (main.py) and the schedules it writes (schedule.py). The only part that
may import everything.
"""
