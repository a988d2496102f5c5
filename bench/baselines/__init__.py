"""Minimal servers the service is measured against (bench/capacity.py starts them)."""
