"""Destinations: where rows and changes land. PostgreSQL first."""
