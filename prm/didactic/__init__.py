"""Didactic tasks with exact values, for checking a paper's claims at CPU scale."""
