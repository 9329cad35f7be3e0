"""The terminal face: the commands CI and people run (commands.py) and what they print (render.py)."""
