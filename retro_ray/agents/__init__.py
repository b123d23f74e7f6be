"""Actors, reflectors and the trial loop: plain asyncio Python, no Ray import."""
