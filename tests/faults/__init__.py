"""Fault injection: a TCP proxy between the agent's drivers and real servers, and scenarios."""
