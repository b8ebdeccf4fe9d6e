"""Losses shared by pretext tasks, one file per family."""
