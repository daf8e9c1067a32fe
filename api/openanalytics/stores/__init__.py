"""Adapters for the three stores; code above them never knows embedded from server."""
